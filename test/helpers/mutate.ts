// Mutated-image cases for the fuzz test (test/qcow2/fuzz.test.ts): seed images with the
// offsets of their header fields (from the field tables) and table areas, a fast-check arbitrary
// of mutations, and a replayable `apply`. Kept apart so a failing case can be replayed in a script.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';

import { BITMAP_DIR_ENTRY } from '../../provider/qcow2/spec/bitmaps';
import { MemoryBlockFile } from '../../provider/qcow2/io/blockfile';
import * as C from '../../provider/qcow2/spec/constants';
import { EXTENSION, HEADER_ADDITIONAL, HEADER_V2, HEADER_V3_TAIL } from '../../provider/qcow2/spec/header';
import { Image } from '../../provider/qcow2/meta/image';
import { SNAPSHOT_HEADER } from '../../provider/qcow2/spec/snapshot';
import type { Struct, FieldSpec } from '../../provider/qcow2/spec/struct';
import { encodeExtensions, listExtensions, makeImage, patched, setU32 } from './images';

export const MAX_READ = 64 << 20;
/**
 * Reads one call may make. The format's own limits bound honest work: a header may claim up to
 * 65536 snapshots and 65535 bitmaps, each read in a few pieces (a forged nb_snapshots of 0xffff
 * costs about 130,000 reads). More than this means a loop that no limit of the format stops.
 */
export const MAX_READS = 1_000_000;

// ------------------------------------------------------------------------------------------------
// The guarded file
// ------------------------------------------------------------------------------------------------

export class UnboundedReadError extends Error {}

/**
 * A MemoryBlockFile that refuses any single read over 64 MiB, and more than MAX_READS reads,
 * with a distinctive error: the fuzz test's bounds on work, counted rather than timed.
 */
export class GuardedFile extends MemoryBlockFile {
  largestRead = 0;
  reads = 0;
  override readInto(target: Uint8Array, offset: number): void {
    if (target.length > MAX_READ) throw new UnboundedReadError(`read of ${target.length} bytes at offset ${offset}`);
    if (++this.reads > MAX_READS) throw new UnboundedReadError(`more than ${MAX_READS} reads (the last at offset ${offset})`);
    this.largestRead = Math.max(this.largestRead, target.length);
    super.readInto(target, offset);
  }
}

// ------------------------------------------------------------------------------------------------
// Seed images and where their fields and tables are
// ------------------------------------------------------------------------------------------------

export interface Seed { name: string; bytes: Buffer; regions: Array<[start: number, end: number]>; fields: Array<[offset: number, width: number]> }

const WIDTH: Record<string, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

/** [offset, width] of every field of a struct placed at `base` (padding excluded). */
function fieldsOf(s: Struct<readonly FieldSpec[]>, base: number): Array<[number, number]> {
  return s.fields.filter(([t]) => !t.startsWith('pad')).map(([t, name]) => [base + s.offsets[name]!, WIDTH[t]!]);
}

function describeSeed(name: string, bytes: Buffer): Seed {
  const img = Image.open(new MemoryBlockFile(bytes));
  const h = img.header;
  const cs = img.geometry.clusterSize;
  const regions: Array<[number, number]> = [[0, Math.min(cs, bytes.length)]];
  const add = (start: bigint | number, len: number) => {
    const s = Number(start);
    if (len > 0 && s < bytes.length) regions.push([s, Math.min(bytes.length, s + len)]);
  };
  add(h.l1TableOffset, h.l1Size * 8);
  add(h.refcountTableOffset, h.refcountTableClusters * cs);
  for (const e of img.readReftable()) if (e) add(e & C.REFT_OFFSET_MASK, cs);
  for (const e of img.readL1()) if (e & C.L1E_OFFSET_MASK) add(e & C.L1E_OFFSET_MASK, cs);
  const snaps = img.readSnapshots();
  if (snaps.length) add(h.snapshotsOffset, snaps.tableSize ?? 40);
  for (const s of snaps) add(s.l1TableOffset, s.l1Size * 8);
  if (h.bitmaps) add(h.bitmaps.bitmapDirectoryOffset, Number(h.bitmaps.bitmapDirectorySize));

  const fields: Array<[number, number]> = [...fieldsOf(HEADER_V2, 0)];
  if (h.version === 3) fields.push(...fieldsOf(HEADER_V3_TAIL, HEADER_V2.size), ...fieldsOf(HEADER_ADDITIONAL, C.QCOW2_V3_MIN_HEADER_LENGTH));
  for (const e of listExtensions(bytes)) fields.push(...fieldsOf(EXTENSION, e.at));
  if (snaps.length) fields.push(...fieldsOf(SNAPSHOT_HEADER, Number(h.snapshotsOffset)));
  if (h.bitmaps) fields.push(...fieldsOf(BITMAP_DIR_ENTRY, Number(h.bitmaps.bitmapDirectoryOffset)));
  return { name, bytes, regions, fields };
}

function unknownsImage(): Buffer {
  const base = makeImage({ size: 1n << 20n, clusterSize: 4096, backingFile: 'base.img', backingFormat: 'raw' });
  const table = Buffer.alloc(2 * 48);
  table[0] = 0; table[1] = 9; table.write('frobnication', 2);
  table[48] = 2; table[49] = 7; table.write('autoclear seven', 50);
  return patched(base, (b) => {
    b.fill(0, 100, 4096);
    setU32(b, 100, 128);
    b.fill(0x5a, 112, 128);
    const exts = encodeExtensions([
      { magic: C.QCOW2_EXT_MAGIC_BACKING_FORMAT, data: Buffer.from('raw') },
      { magic: C.QCOW2_EXT_MAGIC_FEATURE_TABLE, data: table },
      { magic: 0x0badf00d, data: Buffer.from('kept by every rewrite') },
      { magic: 0, data: Buffer.alloc(0) },
    ]);
    b.set(exts, 128);
    b.write('base.img', 128 + exts.length);
    b.writeBigUInt64BE(BigInt(128 + exts.length), 8);
    b.writeUInt32BE(8, 16);
  });
}

const fixture = (name: string) => readFileSync(join(__dirname, '../fixtures', name));

export const SEEDS: Seed[] = [
  describeSeed('v3 64k 1G', makeImage({ size: 1n << 30n })),
  describeSeed('v2 64k backing', makeImage({ size: 1n << 30n, compat: '0.10', backingFile: '/b/base.qcow2', backingFormat: 'qcow2' })),
  describeSeed('512 metadata prealloc', makeImage({ size: 128n << 10n, clusterSize: 512, preallocation: 'metadata' })),
  describeSeed('4k data-file-raw', makeImage({ size: 1n << 20n, clusterSize: 4096, dataFile: '/d/disk.raw', dataFileRaw: true })),
  describeSeed('16k extl2 zstd lazy rc1', makeImage({ size: 1n << 20n, clusterSize: 16384, extendedL2: true, compressionType: 'zstd', lazyRefcounts: true, refcountBits: 1 })),
  describeSeed('512 rc64', makeImage({ size: 256n << 10n, clusterSize: 512, refcountBits: 64, preallocation: 'metadata' })),
  describeSeed('4k unknown fields and extensions', unknownsImage()),
  describeSeed('qemu snapshots', fixture('snapshots-512.qcow2')),
  describeSeed('qemu bitmaps', fixture('bitmaps-512.qcow2')),
];

// ------------------------------------------------------------------------------------------------
// Mutations
// ------------------------------------------------------------------------------------------------

export type Mutation =
  | { kind: 'bytes'; region: number; at: number; data: number[] }
  | { kind: 'flip'; field: number; bit: number }
  | { kind: 'set'; field: number; value: bigint }
  | { kind: 'truncate'; short: boolean; at: number };

const INTERESTING: bigint[] = [
  0n, 1n, 2n, 3n, 4n, 7n, 8n, 9n, 16n, 21n, 22n, 63n, 64n, 72n, 103n, 104n, 111n, 112n, 0x7fn, 0x80n, 0xffn, 0x100n, 0x1ffn, 0x200n, 0x3ffn, 0x400n,
  0xfffn, 0x1000n, 0xffffn, 0x10000n, 0x20000n, 0x30000n, 0x400000n, 0x7fffffffn, 0x80000000n, 0xffffffffn, 1n << 32n,
  (1n << 53n) - 1n, 1n << 53n, 1n << 56n, 1n << 62n, (1n << 63n) - 1n, 1n << 63n, (1n << 64n) - 1n, (1n << 64n) - 512n,
];

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('bytes' as const), region: fc.nat(), at: fc.nat(), data: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 1, maxLength: 16 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('flip' as const), field: fc.nat(), bit: fc.integer({ min: 0, max: 63 }) }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('set' as const), field: fc.nat(), value: fc.oneof(fc.constantFrom(...INTERESTING), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('truncate' as const), short: fc.boolean(), at: fc.nat() }) },
);

export const CASE = fc.record({ seed: fc.nat(), mutations: fc.array(mutation, { minLength: 1, maxLength: 4 }) });
export type Case = { seed: number; mutations: Mutation[] };

export function apply(c: Case): { seed: Seed; bytes: Buffer } {
  const seed = SEEDS[c.seed % SEEDS.length]!;
  let bytes = Buffer.from(seed.bytes);
  for (const m of c.mutations) {
    switch (m.kind) {
      case 'bytes': {
        const [start, end] = seed.regions[m.region % seed.regions.length]!;
        const at = start + (m.at % Math.max(1, end - start));
        for (let i = 0; i < m.data.length && at + i < bytes.length; i++) bytes[at + i] = m.data[i]!;
        break;
      }
      case 'flip': {
        const [off, width] = seed.fields[m.field % seed.fields.length]!;
        const bit = m.bit % (width * 8);
        const byte = off + width - 1 - (bit >> 3);
        if (byte < bytes.length) bytes[byte]! ^= 1 << (bit & 7);
        break;
      }
      case 'set': {
        const [off, width] = seed.fields[m.field % seed.fields.length]!;
        const v = BigInt.asUintN(width * 8, m.value);
        for (let i = 0; i < width && off + i < bytes.length; i++) bytes[off + i] = Number((v >> BigInt(8 * (width - 1 - i))) & 0xffn);
        break;
      }
      case 'truncate':
        bytes = bytes.subarray(0, m.short ? m.at % 1024 : m.at % (bytes.length + 1));
        break;
    }
  }
  return { seed, bytes };
}

export const show = (c: Case) => JSON.stringify(c, (_k, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}n` : v));

/** Inverse of show, for replaying a case printed by a failing run. */
export function parseCase(text: string): Case {
  return JSON.parse(text, (_k, v) => (typeof v === 'string' && /^0x[0-9a-f]+n$/.test(v) ? BigInt(v.slice(0, -1)) : v)) as Case;
}
