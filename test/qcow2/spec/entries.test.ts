// L1 and L2 table entries (l1.ts, l2.ts): exact 64-bit codecs with flags in bits 62/63, reserved
// masks, and cluster classification exactly as QEMU's qcow2_get_cluster_type.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import * as C from '../../../provider/qcow2/spec/constants';
import { decodeL1Entry, encodeL1Entry, readEntries, writeEntries } from '../../../provider/qcow2/spec/l1';
import { decodeL2Entry, encodeNormalEntry } from '../../../provider/qcow2/spec/l2';
import { makeImage, planFor } from '../../helpers/images';

const u64 = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n });
const std = { dataFile: false, extendedL2: false };
const ext = { dataFile: false, extendedL2: true };
const df = { dataFile: true, extendedL2: false };

describe('u64 entry arrays', () => {
  it('round_trip_exactly_with_bits_62_and_63_set', () => {
    const entries = [0n, 1n, 1n << 63n, 1n << 62n, 0xc000000000000001n, (1n << 64n) - 1n, 0x8000000000050000n, (1n << 53n) + 1n];
    const bytes = writeEntries(entries);
    expect(Buffer.from(bytes).toString('hex')).toBe(
      '0000000000000000' + '0000000000000001' + '8000000000000000' + '4000000000000000' +
      'c000000000000001' + 'ffffffffffffffff' + '8000000000050000' + '0020000000000001');
    expect(readEntries(bytes, entries.length)).toEqual(entries);
  });

  it('round_trip_any_values_at_any_offset', () => {
    fc.assert(fc.property(fc.array(u64, { maxLength: 32 }), fc.integer({ min: 0, max: 64 }), (entries, at) => {
      const buf = new Uint8Array(at + entries.length * 8 + 8);
      writeEntries(entries, buf, at);
      expect(readEntries(buf, entries.length, at)).toEqual(entries);
      expect(writeEntries(readEntries(buf, entries.length, at))).toEqual(buf.slice(at, at + entries.length * 8));
    }), { seed: 7, numRuns: 300 });
  });
});

describe('L1 entries', () => {
  it('decode_offset_copied_and_reserved_bits', () => {
    expect(decodeL1Entry(0x8000000000050000n)).toEqual({ l2Offset: 0x50000n, copied: true, reserved: 0n });
    expect(decodeL1Entry(0x50000n)).toEqual({ l2Offset: 0x50000n, copied: false, reserved: 0n });
    expect(decodeL1Entry((1n << 64n) - 1n)).toEqual({ l2Offset: 0x00fffffffffffe00n, copied: true, reserved: 0x7f000000000001ffn });
    expect(decodeL1Entry(1n << 62n).reserved).toBe(1n << 62n);
  });

  it('encode_then_decode_is_identity_for_valid_offsets', () => {
    fc.assert(fc.property(fc.bigInt({ min: 0n, max: (1n << 47n) - 1n }), fc.boolean(), (cluster, copied) => {
      const offset = cluster << 9n;
      const e = encodeL1Entry(offset, copied);
      expect(decodeL1Entry(e)).toEqual({ l2Offset: offset, copied, reserved: 0n });
    }), { seed: 8, numRuns: 300 });
  });

  it('highest_representable_offset_keeps_all_bits', () => {
    expect(encodeL1Entry(0x00fffffffffffe00n, true)).toBe(0x80fffffffffffe00n);
  });
});

describe('L2 entries (qcow2_get_cluster_type)', () => {
  it('classify_standard_entries', () => {
    expect(decodeL2Entry(0n, 0n, std).type).toBe('unallocated');
    expect(decodeL2Entry(0x8000000000050000n, 0n, std)).toMatchObject({ type: 'normal', hostOffset: 0x50000n, copied: true, reserved: 0n });
    expect(decodeL2Entry(0x50000n, 0n, std)).toMatchObject({ type: 'normal', copied: false });
    expect(decodeL2Entry(1n, 0n, std).type).toBe('zero-plain');
    expect(decodeL2Entry(0x8000000000050001n, 0n, std)).toMatchObject({ type: 'zero-alloc', hostOffset: 0x50000n });
    expect(decodeL2Entry(1n << 62n, 0n, std).type).toBe('compressed');
    expect(decodeL2Entry(0xc000000000000001n, 0n, std)).toMatchObject({ type: 'compressed', copied: true });
  });

  it('offset_0_with_copied_is_guest_cluster_0_in_an_external_data_file', () => {
    expect(decodeL2Entry(0x8000000000000000n, 0n, df)).toMatchObject({ type: 'normal', hostOffset: 0n, copied: true });
    expect(decodeL2Entry(0x8000000000000000n, 0n, std).type).toBe('unallocated');
    expect(decodeL2Entry(0n, 0n, df).type).toBe('unallocated');
  });

  it('zero_bit_with_offset_0_is_zero_plain_even_with_copied_and_a_data_file', () => {
    // QEMU tests the offset only: the COPIED disambiguation applies to non-zero entries.
    expect(decodeL2Entry(0x8000000000000001n, 0n, df).type).toBe('zero-plain');
    expect(decodeL2Entry(0x8000000000200001n, 0n, df)).toMatchObject({ type: 'zero-alloc', hostOffset: 0x200000n });
  });

  it('extended_l2_ignores_bit_0_and_carries_the_subcluster_bitmap', () => {
    expect(decodeL2Entry(1n, 0n, ext)).toMatchObject({ type: 'unallocated', reserved: 0n });
    expect(decodeL2Entry(0x8000000000050001n, 0xffffffffn, ext)).toMatchObject({ type: 'normal', bitmap: 0xffffffffn });
    expect(decodeL2Entry(0n, 0xffffffff00000000n, ext)).toMatchObject({ type: 'unallocated', bitmap: 0xffffffff00000000n });
  });

  it('reserved_bits_follow_the_standard_mask', () => {
    expect(decodeL2Entry(0x3f000000000001fen | 0x50000n, 0n, std).reserved).toBe(0x3f000000000001fen);
    expect(C.L2E_STD_RESERVED_MASK).toBe(0x3f000000000001fen);
    expect(C.L1E_RESERVED_MASK).toBe(0x7f000000000001ffn);
  });

  it('host_offsets_keep_bits_9_to_55', () => {
    fc.assert(fc.property(u64, (raw) => {
      const e = decodeL2Entry(raw & ~C.QCOW_OFLAG_COMPRESSED, 0n, std);
      expect(e.hostOffset).toBe(raw & 0x00fffffffffffe00n);
      expect(e.copied).toBe((raw >> 63n) === 1n);
    }), { seed: 9, numRuns: 300 });
  });

  it('encodeNormalEntry_sets_copied_and_masks_the_offset', () => {
    expect(encodeNormalEntry(0x50000n)).toBe(0x8000000000050000n);
    expect(encodeNormalEntry(0x50000n, false)).toBe(0x50000n);
    expect(encodeNormalEntry(0x00fffffffffffe00n)).toBe(0x80fffffffffffe00n);
  });
});

describe('entries in created images', () => {
  it('data_file_raw_1g_has_qemus_l1_and_identity_l2_entries', () => {
    const img = makeImage({ size: 1n << 30n, dataFile: '/d/x.raw', dataFileRaw: true });
    expect(img.length).toBe(393216);
    expect(readEntries(img, 2, 3 * 65536)).toEqual([0x8000000000040000n, 0x8000000000050000n]);
    const l2a = readEntries(img, 8192, 0x40000);
    const l2b = readEntries(img, 8192, 0x50000);
    l2a.forEach((e, i) => expect(e).toBe(C.QCOW_OFLAG_COPIED | BigInt(i * 65536)));
    l2b.forEach((e, i) => expect(e).toBe(C.QCOW_OFLAG_COPIED | BigInt((8192 + i) * 65536)));
    expect(decodeL2Entry(l2a[0]!, 0n, df).type).toBe('normal');
  });

  it('metadata_preallocation_maps_each_cluster_after_its_l2_table', () => {
    const plan = planFor({ size: 4n * 65536n, preallocation: 'metadata' });
    const img = makeImage({ size: 4n * 65536n, preallocation: 'metadata' });
    const [l1e] = readEntries(img, 1, 3 * 65536);
    const { l2Offset, copied } = decodeL1Entry(l1e!);
    expect(copied).toBe(true);
    expect(l2Offset).toBe(BigInt(plan.l1[0]!));
    const l2 = readEntries(img, 4, Number(l2Offset));
    l2.forEach((e, i) => expect(e).toBe(C.QCOW_OFLAG_COPIED | (l2Offset + BigInt((i + 1) * 65536))));
  });
});
