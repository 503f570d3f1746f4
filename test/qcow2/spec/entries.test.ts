// L1 and L2 table entries (l1.ts, l2.ts): exact 64-bit codecs with flags in bits 62/63, reserved
// masks, and cluster classification exactly as QEMU's qcow2_get_cluster_type.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import * as C from '../../../provider/qcow2/spec/constants';
import { decodeL1Entry, encodeL1Entry, readEntries, writeEntries } from '../../../provider/qcow2/spec/l1';
import {
  L2_HI_COPIED, clusterTypeOf, entryHi, entryLo, entryOf, hasReservedBits, hostClusterOf, hostOffsetOf, normalEntry,
  parseCompressedEntry, putNormalEntry, readL2Entry, subclusterTypeOf, tableView, writeL2Entry,
} from '../../../provider/qcow2/spec/l2';
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

/** One 64-bit entry through the table walkers' accessors (the entry as a table holds it). */
function decode(raw: bigint, f: { dataFile: boolean; extendedL2: boolean }, bitmap = 0n) {
  const t = new Uint8Array(16);
  const v = tableView(t);
  v.setBigUint64(0, raw);
  v.setBigUint64(8, bitmap);
  const e = readL2Entry(v, 0, f.extendedL2);
  const type = clusterTypeOf(e.hi, e.lo, f);
  return {
    type,
    hostOffset: type === 'compressed' ? 0n : BigInt(hostOffsetOf(e.hi, e.lo)),
    copied: (e.hi & L2_HI_COPIED) !== 0,
    reserved: type !== 'compressed' && hasReservedBits(e.hi, e.lo),
    bitmap: entryOf(e.zeroBits, e.allocBits),
  };
}

describe('L2 entries (qcow2_get_cluster_type)', () => {
  it('classify_standard_entries', () => {
    expect(decode(0n, std).type).toBe('unallocated');
    expect(decode(0x8000000000050000n, std)).toMatchObject({ type: 'normal', hostOffset: 0x50000n, copied: true, reserved: false });
    expect(decode(0x50000n, std)).toMatchObject({ type: 'normal', copied: false });
    expect(decode(1n, std).type).toBe('zero-plain');
    expect(decode(0x8000000000050001n, std)).toMatchObject({ type: 'zero-alloc', hostOffset: 0x50000n });
    expect(decode(1n << 62n, std).type).toBe('compressed');
    expect(decode(0xc000000000000001n, std)).toMatchObject({ type: 'compressed', copied: true });
  });

  it('offset_0_with_copied_is_guest_cluster_0_in_an_external_data_file', () => {
    expect(decode(0x8000000000000000n, df)).toMatchObject({ type: 'normal', hostOffset: 0n, copied: true });
    expect(decode(0x8000000000000000n, std).type).toBe('unallocated');
    expect(decode(0n, df).type).toBe('unallocated');
  });

  it('zero_bit_with_offset_0_is_zero_plain_even_with_copied_and_a_data_file', () => {
    // QEMU tests the offset only: the COPIED disambiguation applies to non-zero entries.
    expect(decode(0x8000000000000001n, df).type).toBe('zero-plain');
    expect(decode(0x8000000000200001n, df)).toMatchObject({ type: 'zero-alloc', hostOffset: 0x200000n });
  });

  it('extended_l2_ignores_bit_0_and_carries_the_subcluster_bitmap', () => {
    expect(decode(1n, ext)).toMatchObject({ type: 'unallocated', reserved: false });
    expect(decode(0x8000000000050001n, ext, 0xffffffffn)).toMatchObject({ type: 'normal', bitmap: 0xffffffffn });
    expect(decode(0n, ext, 0xffffffff00000000n)).toMatchObject({ type: 'unallocated', bitmap: 0xffffffff00000000n });
  });

  it('reserved_bits_follow_the_standard_mask', () => {
    expect(decode(0x3f000000000001fen | 0x50000n, std).reserved).toBe(true);
    for (let bit = 0n; bit < 64n; bit++) {
      const inMask = ((C.L2E_STD_RESERVED_MASK >> bit) & 1n) === 1n;
      expect(decode((1n << bit) & ~C.QCOW_OFLAG_COMPRESSED, std).reserved).toBe(inMask);
    }
    expect(C.L2E_STD_RESERVED_MASK).toBe(0x3f000000000001fen);
    expect(C.L1E_RESERVED_MASK).toBe(0x7f000000000001ffn);
  });

  it('host_offsets_keep_bits_9_to_55', () => {
    fc.assert(fc.property(u64, (raw) => {
      const e = decode(raw & ~C.QCOW_OFLAG_COMPRESSED, std);
      expect(e.hostOffset).toBe(raw & 0x00fffffffffffe00n);
      expect(e.copied).toBe((raw >> 63n) === 1n);
    }), { seed: 9, numRuns: 300 });
  });

  it('the_normal_entry_encoder_sets_copied_and_masks_the_offset', () => {
    const enc = (offset: number, copied?: boolean) => { const e = normalEntry(offset, copied); return entryOf(e.hi, e.lo); };
    expect(enc(0x50000)).toBe(0x8000000000050000n);
    expect(enc(0x50000, false)).toBe(0x50000n);
    expect(enc(2 ** 53 - 512)).toBe(0x801ffffffffffe00n);
    expect(enc(0x50000 + 0x1ff)).toBe(0x8000000000050000n); // bits below 9 are not offset bits
  });
});

/** qcow2_get_cluster_type on a 64-bit entry, written here independently of l2.ts. */
function referenceType(raw: bigint, f: { dataFile: boolean; extendedL2: boolean }): string {
  if (raw & C.QCOW_OFLAG_COMPRESSED) return 'compressed';
  const off = raw & C.L2E_OFFSET_MASK;
  if ((raw & C.QCOW_OFLAG_ZERO) && !f.extendedL2) return off ? 'zero-alloc' : 'zero-plain';
  if (!off) return f.dataFile && (raw & C.QCOW_OFLAG_COPIED) ? 'normal' : 'unallocated';
  return 'normal';
}

describe('L2 entries as u32 halves (the table walkers\' path)', () => {
  const formats = [std, ext, df, { dataFile: true, extendedL2: true }];

  it('the_halves_classify_as_qcow2_get_cluster_type_does', () => {
    fc.assert(fc.property(u64, (raw) => {
      const t = new Uint8Array(8);
      const v = tableView(t);
      v.setBigUint64(0, raw);
      for (const f of formats) expect(clusterTypeOf(entryHi(v, 0), entryLo(v, 0), f)).toBe(referenceType(raw, f));
      expect(entryOf(entryHi(v, 0), entryLo(v, 0))).toBe(raw);
    }), { seed: 21, numRuns: 2000 });
  });

  it('host_offsets_and_clusters_from_halves_are_exact_up_to_bit_55', () => {
    fc.assert(fc.property(fc.bigInt({ min: 0n, max: (1n << 47n) - 1n }), fc.integer({ min: 9, max: 21 }), (cluster, bits) => {
      const offset = cluster << 9n;
      const raw = C.QCOW_OFLAG_COPIED | offset | 0x1fen;
      const hi = Number(raw >> 32n) | 0, lo = Number(raw & 0xffffffffn) | 0; // as the accessors return them
      expect(BigInt(hostOffsetOf(hi, lo))).toBe(offset);
      expect(BigInt(hostClusterOf(hi, lo, bits))).toBe(offset >> BigInt(bits));
    }), { seed: 22, numRuns: 500 });
  });

  it('the_normal_entry_encoder_writes_copied_or_offset_exactly', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 2 ** 44 - 1 }), fc.boolean(), (cluster, copied) => {
      const offset = cluster * 512;
      const t = new Uint8Array(16);
      putNormalEntry(tableView(t), 8, offset, copied);
      expect(tableView(t).getBigUint64(8)).toBe(BigInt(offset) | (copied ? C.QCOW_OFLAG_COPIED : 0n));
    }), { seed: 23, numRuns: 500 });
  });

  it('read_and_write_round_trip_standard_and_extended_entries', () => {
    fc.assert(fc.property(fc.array(fc.tuple(u64, u64), { minLength: 4, maxLength: 4 }), fc.boolean(), (entries, extended) => {
      const step = extended ? 16 : 8;
      const t = new Uint8Array(4 * step);
      const v = tableView(t);
      entries.forEach(([raw, bitmap], k) => {
        v.setBigUint64(k * step, raw);
        if (extended) v.setBigUint64(k * step + 8, bitmap);
      });
      const copy = new Uint8Array(t.length);
      entries.forEach((_, k) => writeL2Entry(tableView(copy), k, extended, readL2Entry(v, k, extended)));
      expect(copy).toEqual(t);
      const e = readL2Entry(v, 1, extended);
      expect(entryOf(e.hi, e.lo)).toBe(entries[1]![0]);
      if (extended) expect(entryOf(e.zeroBits, e.allocBits)).toBe(entries[1]![1]);
    }), { seed: 24, numRuns: 300 });
  });

  it('subcluster_types_follow_qcow2_get_subcluster_type', () => {
    const e = { dataFile: false, extendedL2: true };
    expect(subclusterTypeOf('normal', 0b0001, 0b0010, 0, e)).toBe('normal');
    expect(subclusterTypeOf('normal', 0b0001, 0b0010, 1, e)).toBe('zero-alloc');
    expect(subclusterTypeOf('normal', 0b0001, 0b0010, 2, e)).toBe('unallocated-alloc');
    expect(subclusterTypeOf('unallocated', 0, 0b0100, 2, e)).toBe('zero-plain');
    expect(subclusterTypeOf('unallocated', 0, 0, 31, e)).toBe('unallocated-plain');
    expect(subclusterTypeOf('compressed', 0, 0, 5, e)).toBe('compressed');
    expect(() => subclusterTypeOf('normal', 1, 1, 0, e)).toThrow(/Invalid subcluster bitmap/);
    expect(() => subclusterTypeOf('unallocated', 1, 0, 3, e)).toThrow(/non-zero subcluster allocation map/);
    // Standard L2: the cluster is its one subcluster.
    expect(subclusterTypeOf('unallocated', 0, 0, 0, std)).toBe('unallocated-plain');
    expect(subclusterTypeOf('zero-alloc', 0, 0, 0, std)).toBe('zero-alloc');
  });
});

describe('compressed cluster descriptors (qcow2_parse_compressed_l2_entry)', () => {
  it('offset_and_sector_count_split_at_62_minus_cluster_bits_minus_8', () => {
    // 64 KiB clusters: bits 0..53 the offset, 54..61 the additional 512-byte sectors.
    const entry = C.QCOW_OFLAG_COMPRESSED | (3n << 54n) | 0x123456n;
    expect(parseCompressedEntry(entry, 16)).toEqual({ offset: 0x123456n, size: 4 * 512 - 0x56, firstCluster: 0x12, clusters: 1 });
    // COPIED and COMPRESSED lie outside both fields.
    expect(parseCompressedEntry(entry | C.QCOW_OFLAG_COPIED, 16)).toEqual(parseCompressedEntry(entry, 16));
  });

  it('the_clusters_a_descriptor_touches_are_counted_across_a_boundary', () => {
    // 512-byte clusters: one sector field bit; data from 0x3f0, 2 sectors minus 0x1f0: to 0x5ff.
    const r = parseCompressedEntry(C.QCOW_OFLAG_COMPRESSED | (1n << 61n) | 0x3f0n, 9);
    expect(r).toMatchObject({ offset: 0x3f0n, size: 2 * 512 - 0x1f0, firstCluster: 1, clusters: 2 });
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
    expect(decode(l2a[0]!, df).type).toBe('normal');
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
