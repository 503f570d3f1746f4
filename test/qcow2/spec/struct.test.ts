// Field tables (struct.ts): offsets and sizes derived from the table, exact 64-bit values,
// encode -> decode -> encode identity, and the on-disk layouts QEMU defines.

import fc from 'fast-check';
import { describe, expect, it } from 'vitest';

import { BITMAP_DIR_ENTRY } from '../../../provider/qcow2/spec/bitmaps';
import { BITMAPS_EXT, EXTENSION, HEADER_ADDITIONAL, HEADER_V2, HEADER_V3_TAIL } from '../../../provider/qcow2/spec/header';
import { SNAPSHOT_EXTRA, SNAPSHOT_HEADER } from '../../../provider/qcow2/spec/snapshot';
import { defineStruct } from '../../../provider/qcow2/spec/struct';

const MIXED = defineStruct([
  ['u8', 'a'],
  ['u16', 'b'],
  ['u32', 'c'],
  ['u64', 'd'],
  ['pad3', 'gap'],
  ['u64', 'e'],
] as const);

describe('defineStruct', () => {
  it('derives_offsets_and_size_from_the_field_widths', () => {
    expect(MIXED.offsets).toEqual({ a: 0, b: 1, c: 3, d: 7, e: 18 });
    expect(MIXED.size).toBe(26);
  });

  it('padding_has_a_width_but_no_offset_and_is_zeroed_on_encode', () => {
    const buf = new Uint8Array(MIXED.size).fill(0xee);
    MIXED.encode({ a: 1, b: 2, c: 3, d: 4n, e: 5n }, buf);
    expect([...buf.subarray(15, 18)]).toEqual([0, 0, 0]);
    expect(MIXED.offsets).not.toHaveProperty('gap');
  });

  it('encodes_big_endian', () => {
    const buf = new Uint8Array(MIXED.size);
    MIXED.encode({ a: 0x01, b: 0x0203, c: 0x04050607, d: 0x08090a0b0c0d0e0fn, e: 0x1011121314151617n }, buf);
    expect(Buffer.from(buf).toString('hex')).toBe('01' + '0203' + '04050607' + '08090a0b0c0d0e0f' + '000000' + '1011121314151617');
  });

  it('keeps_64_bit_values_exact_including_bits_62_and_63', () => {
    for (const d of [0n, 1n, (1n << 53n) + 1n, (1n << 62n) | 1n, 1n << 63n, (1n << 63n) - 512n, (1n << 64n) - 1n, 0xc000000000000001n]) {
      const buf = new Uint8Array(MIXED.size);
      MIXED.encode({ a: 0, b: 0, c: 0, d, e: ~d & ((1n << 64n) - 1n) }, buf);
      const back = MIXED.decode(buf);
      expect(back.d).toBe(d);
      expect(back.e).toBe(~d & ((1n << 64n) - 1n));
      expect(typeof back.d).toBe('bigint');
    }
  });

  it('decodes_at_an_offset_inside_a_subarray_view', () => {
    const backing = new Uint8Array(100).fill(0x55);
    const view = backing.subarray(10, 90);
    MIXED.encode({ a: 9, b: 8, c: 7, d: 6n, e: 5n }, view, 20);
    expect(MIXED.decode(view, 20)).toEqual({ a: 9, b: 8, c: 7, d: 6n, e: 5n });
    expect(backing[29]).toBe(0x55); // nothing written before the view offset
    expect(backing[30]).toBe(9);
  });

  it('round_trips_encode_decode_encode_for_any_values', () => {
    fc.assert(fc.property(
      fc.integer({ min: 0, max: 0xff }), fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0, max: 0xffffffff }),
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      (a, b, c, d, e) => {
        const one = new Uint8Array(MIXED.size);
        MIXED.encode({ a, b, c, d, e }, one);
        const decoded = MIXED.decode(one);
        expect(decoded).toEqual({ a, b, c, d, e });
        const two = new Uint8Array(MIXED.size);
        MIXED.encode(decoded, two);
        expect(two).toEqual(one);
      }), { seed: 42, numRuns: 500 });
  });
});

describe('qcow2 layouts', () => {
  it('v2_header_is_72_bytes_with_the_spec_offsets', () => {
    expect(HEADER_V2.size).toBe(72);
    expect(HEADER_V2.offsets).toEqual({
      magic: 0, version: 4, backingFileOffset: 8, backingFileSize: 16, clusterBits: 20, size: 24,
      cryptMethod: 32, l1Size: 36, l1TableOffset: 40, refcountTableOffset: 48, refcountTableClusters: 56,
      nbSnapshots: 60, snapshotsOffset: 64,
    });
  });

  it('v3_header_is_104_bytes_minimum_and_112_with_compression_type_at_104', () => {
    const v3 = (name: string) => HEADER_V2.size + HEADER_V3_TAIL.offsets[name]!;
    expect(HEADER_V2.size + HEADER_V3_TAIL.size).toBe(104);
    expect(HEADER_V2.size + HEADER_V3_TAIL.size + HEADER_ADDITIONAL.size).toBe(112);
    expect([v3('incompatibleFeatures'), v3('compatibleFeatures'), v3('autoclearFeatures'), v3('refcountOrder'), v3('headerLength')])
      .toEqual([72, 80, 88, 96, 100]);
    expect(HEADER_V2.size + HEADER_V3_TAIL.size + HEADER_ADDITIONAL.offsets.compressionType!).toBe(104);
  });

  it('extension_and_auxiliary_structures_have_spec_sizes', () => {
    expect(EXTENSION.size).toBe(8);
    expect(EXTENSION.offsets).toEqual({ magic: 0, length: 4 });
    expect(BITMAPS_EXT.size).toBe(24);
    expect(BITMAPS_EXT.offsets).toEqual({ nbBitmaps: 0, reserved32: 4, bitmapDirectorySize: 8, bitmapDirectoryOffset: 16 });
    expect(SNAPSHOT_HEADER.size).toBe(40); // sizeof(QCowSnapshotHeader)
    expect(SNAPSHOT_EXTRA.size).toBe(24);
    expect(BITMAP_DIR_ENTRY.size).toBe(24);
    expect(BITMAP_DIR_ENTRY.offsets).toEqual({
      bitmapTableOffset: 0, bitmapTableSize: 8, flags: 12, type: 16, granularityBits: 17, nameSize: 18, extraDataSize: 20,
    });
  });

  it('v2_header_round_trips_with_size_2_pow_63_minus_512', () => {
    const value = {
      magic: 0x514649fb, version: 2, backingFileOffset: 0xfedcba9876543210n, backingFileSize: 0xffffffff, clusterBits: 16,
      size: (1n << 63n) - 512n, cryptMethod: 0, l1Size: 0x80000000, l1TableOffset: 0x8000000000030000n,
      refcountTableOffset: (1n << 64n) - 512n, refcountTableClusters: 1, nbSnapshots: 0, snapshotsOffset: 1n << 62n,
    };
    const buf = new Uint8Array(72);
    HEADER_V2.encode(value, buf);
    expect(HEADER_V2.decode(buf)).toEqual(value);
    expect(Buffer.from(buf.subarray(24, 32)).toString('hex')).toBe('7ffffffffffffe00');
  });
});
