// Refcount entries (refcount.ts) for every width from 1 to 64 bits: sub-byte widths pack
// LSB-first inside each byte, widths of 8 bits and more are big-endian, 64-bit values are exact.
// Checked against an independent bit-level model, the notes' vectors and qemu-img's refblocks.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';

import { decodeReftableEntry, encodeRefblock, getRefcount, refcountMax, setRefcount } from '../../../provider/qcow2/spec/refcount';
import { makeImage } from '../../helpers/images';
import { runQemuImg, skipWithoutQemu } from '../../helpers/qemu';

const SKIP_QEMU = skipWithoutQemu('qcow2/refcount');
const tmp = mkdtempSync(join(tmpdir(), 'qcow2-refcount-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const ORDERS = [0, 1, 2, 3, 4, 5, 6] as const;
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** Independent model: entry i occupies bits [i*w, (i+1)*w) of the block, numbered as described. */
function modelGet(block: Uint8Array, width: number, index: number): bigint {
  if (width < 8) {
    const bit = index * width;
    return BigInt((block[Math.floor(bit / 8)]! >> (bit % 8)) & ((1 << width) - 1));
  }
  const bytes = width / 8;
  let v = 0n;
  for (let k = 0; k < bytes; k++) v = (v << 8n) | BigInt(block[index * bytes + k]!);
  return v;
}

describe('refcount widths', () => {
  it.each(ORDERS)('order_%i_max_is_2_pow_width_minus_1_exactly', (order) => {
    expect(refcountMax(order)).toBe((1n << BigInt(2 ** order)) - 1n);
  });

  it.each(ORDERS)('order_%i_set_then_get_matches_the_model_and_leaves_neighbours_alone', (order) => {
    const width = 2 ** order;
    const entries = 64;
    const blockLen = (entries * width) / 8;
    fc.assert(fc.property(
      fc.array(fc.tuple(fc.integer({ min: 0, max: entries - 1 }), fc.bigInt({ min: 0n, max: refcountMax(order) })), { minLength: 1, maxLength: 40 }),
      (writes) => {
        const block = new Uint8Array(blockLen);
        const expected = new Array<bigint>(entries).fill(0n);
        for (const [i, v] of writes) {
          setRefcount(block, order, i, v);
          expected[i] = v;
          for (let k = 0; k < entries; k++) {
            expect(getRefcount(block, order, k)).toBe(expected[k]);
            expect(modelGet(block, width, k)).toBe(expected[k]);
          }
        }
      }), { seed: 1000 + order, numRuns: 60 });
  });

  it.each(ORDERS)('order_%i_every_index_of_a_512_byte_block_holds_max_and_one', (order) => {
    const n = (512 * 8) / 2 ** order;
    const block = new Uint8Array(512);
    for (let i = 0; i < n; i++) setRefcount(block, order, i, i % 2 === 0 ? refcountMax(order) : 1n);
    for (let i = 0; i < n; i++) expect(getRefcount(block, order, i)).toBe(i % 2 === 0 ? refcountMax(order) : 1n);
  });

  it('sub_byte_widths_pack_lsb_first', () => {
    const b1 = new Uint8Array(1);
    setRefcount(b1, 0, 0, 1n);
    expect(b1[0]).toBe(0x01);
    setRefcount(b1, 0, 7, 1n);
    expect(b1[0]).toBe(0x81);
    const b2 = new Uint8Array(1);
    setRefcount(b2, 1, 1, 3n);
    expect(b2[0]).toBe(0x0c);
    const b4 = new Uint8Array(1);
    setRefcount(b4, 2, 1, 0xan);
    setRefcount(b4, 2, 0, 0x5n);
    expect(b4[0]).toBe(0xa5);
  });

  it('widths_of_8_bits_and_more_are_big_endian', () => {
    const cases: Array<[number, bigint, string]> = [
      [3, 0xabn, 'ab'],
      [4, 0x1234n, '1234'],
      [5, 0x01020304n, '01020304'],
      [6, 0x0102030405060708n, '0102030405060708'],
    ];
    for (const [order, value, bytes] of cases) {
      const w = 2 ** order / 8;
      const block = new Uint8Array(4 * w);
      setRefcount(block, order, 2, value);
      expect(hex(block.subarray(2 * w, 3 * w))).toBe(bytes);
      expect(hex(block.subarray(0, 2 * w))).toBe('00'.repeat(2 * w));
    }
  });

  it('sixty_four_bit_refcounts_are_exact_with_bits_62_and_63', () => {
    const block = new Uint8Array(32);
    const values = [(1n << 64n) - 1n, 1n << 63n, (1n << 62n) | 1n, (1n << 53n) + 1n];
    values.forEach((v, i) => setRefcount(block, 6, i, v));
    values.forEach((v, i) => expect(getRefcount(block, 6, i)).toBe(v));
    expect(hex(block.subarray(0, 8))).toBe('ffffffffffffffff');
    expect(hex(block.subarray(8, 16))).toBe('8000000000000000');
  });

  it('thirty_two_bit_refcounts_hold_values_above_2_pow_31', () => {
    const block = new Uint8Array(8);
    setRefcount(block, 5, 1, 0xfffffffen);
    expect(getRefcount(block, 5, 1)).toBe(0xfffffffen);
    expect(hex(block)).toBe('00000000fffffffe');
  });
});

describe('fresh image refblock vectors (clusters 0..3 at refcount 1)', () => {
  const VECTORS: Record<number, string> = {
    1: '0f',
    2: '55',
    4: '1111',
    8: '01010101',
    16: '0001000100010001',
    32: '00000001'.repeat(4),
    64: '0000000000000001'.repeat(4),
  };

  it.each(Object.entries(VECTORS))('encodeRefblock_%s_bit_gives_%s', (bits, expected) => {
    const order = Math.log2(Number(bits));
    const block = encodeRefblock(512, order, [1, 1, 1, 1], 0, 4);
    expect(hex(block.subarray(0, expected.length / 2))).toBe(expected);
    expect(block.subarray(expected.length / 2).every((b) => b === 0)).toBe(true);
  });

  it.each(Object.entries(VECTORS))('created_image_with_%s_bit_refcounts_has_refblock_%s', (bits, expected) => {
    const img = makeImage({ size: 1n << 30n, refcountBits: Number(bits) });
    const refblock = img.subarray(2 * 65536, 3 * 65536);
    expect(hex(refblock.subarray(0, expected.length / 2))).toBe(expected);
    expect(refblock.subarray(expected.length / 2).every((b) => b === 0)).toBe(true);
  });

  it.skipIf(SKIP_QEMU).each(Object.keys(VECTORS))('qemu_img_refblock_with_%s_bit_refcounts_matches_ours', (bits) => {
    const file = join(tmp, `r${bits}.qcow2`);
    const r = runQemuImg(['create', '-q', '-f', 'qcow2', '-o', `refcount_bits=${bits}`, file, '1G']);
    expect(r.stderr).toBe('');
    const theirs = readFileSync(file).subarray(2 * 65536, 3 * 65536);
    const ours = makeImage({ size: 1n << 30n, refcountBits: Number(bits) }).subarray(2 * 65536, 3 * 65536);
    expect(hex(ours)).toBe(hex(theirs));
    expect(hex(theirs.subarray(0, VECTORS[Number(bits)]!.length / 2))).toBe(VECTORS[Number(bits)]);
  });
});

describe('refcount table entries', () => {
  it('split_offset_and_reserved_bits_exactly', () => {
    expect(decodeReftableEntry(0x20000n)).toEqual({ offset: 0x20000n, reserved: 0n });
    expect(decodeReftableEntry(0x8000000000020001n)).toEqual({ offset: 0x8000000000020000n, reserved: 1n });
    expect(decodeReftableEntry((1n << 64n) - 1n)).toEqual({ offset: 0xfffffffffffffe00n, reserved: 0x1ffn });
  });
});
