// What compat 0.10 cannot have, asked in each context: create's, amend's and a downgrade's words
// are qemu-img's; the plan's names the property and says what to do instead.

import { describe, expect, it } from 'vitest';
import { firstV2Refusal, v2Refusal, type V2Subject } from '../../provider/rules/compat';

const clean: V2Subject = { lazyRefcounts: false, refcountBits: 16, hasDataFile: false, extendedL2: false, compressionType: 'zlib' };

describe('compat 0.10 constraints', () => {
  it('allow_what_a_version_2_header_can_describe', () => {
    for (const o of ['lazy_refcounts', 'refcount_bits', 'data_file', 'extended_l2', 'compression_type'] as const) {
      for (const c of ['create', 'amend', 'downgrade', 'plan'] as const) expect(v2Refusal(o, c, clean)).toBeUndefined();
    }
  });

  it('word_each_context_as_qemu_img_does', () => {
    const r8 = { ...clean, refcountBits: 8 };
    expect(v2Refusal('refcount_bits', 'create', r8)).toEqual({ property: 'refcount_bits', message: 'Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)' });
    expect(v2Refusal('refcount_bits', 'amend', r8)).toEqual({ property: 'refcount_bits', message: 'Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)' });
    expect(v2Refusal('refcount_bits', 'downgrade', r8)).toEqual({ property: 'compat', message: 'compat=0.10 requires refcount_bits=16' });
    expect(v2Refusal('refcount_bits', 'plan', r8)).toEqual({ property: 'refcountBits', message: 'compat=0.10 requires refcount_bits=16. Set refcountBits: 16 in the same change, or keep compat 1.1' });
    expect(v2Refusal('extended_l2', 'plan', { ...clean, extendedL2: true })?.message)
      .toBe('Cannot downgrade an image with incompatible features 0x10 set (extended L2 entries). Keep compat 1.1, or create a new image without extendedL2');
  });

  it('lets_a_downgrade_convert_zstd_without_compressed_clusters', () => {
    const zstd = { ...clean, compressionType: 'zstd' as const };
    expect(v2Refusal('compression_type', 'downgrade', { ...zstd, hasCompressedClusters: false })).toBeUndefined();
    expect(v2Refusal('compression_type', 'downgrade', { ...zstd, hasCompressedClusters: true })?.message).toMatch(/existing compressed clusters/);
    expect(v2Refusal('compression_type', 'downgrade', zstd), 'not scanned: refused').toBeDefined();
  });

  it('answers_the_first_conflict_in_the_order_asked', () => {
    const both = { ...clean, lazyRefcounts: true, hasDataFile: true };
    expect(firstV2Refusal(['data_file', 'lazy_refcounts'], 'create', both)?.property).toBe('data_file');
    expect(firstV2Refusal(['lazy_refcounts', 'data_file'], 'plan', both)?.property).toBe('lazyRefcounts');
  });
});
