// The header codec (header.ts): cluster 0 round-trips byte for byte, 64-bit fields stay exact,
// unknown header fields and unknown extensions survive a rewrite (extensions flipping order
// exactly as QEMU's qcow2_update_header does), the feature table appears only where QEMU writes
// it, and a header that does not fit in cluster 0 is refused with QEMU's message.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';

import * as C from '../../../provider/qcow2/spec/constants';
import { Qcow2Error } from '../../../provider/model/errors';
import { FEATURE_ENTRY_SIZE, Header, decodeHeader, encodeHeader } from '../../../provider/qcow2/spec/header';
import type { CreateOptions } from '../../../provider/model/options';
import { encodeExtensions, getU32, getU64, listExtensions, makeImage, patched, setU32 } from '../../helpers/images';
import { runQemuImg, skipWithoutQemu } from '../../helpers/qemu';

const SKIP_QEMU = skipWithoutQemu('qcow2/header');
const tmp = mkdtempSync(join(tmpdir(), 'qcow2-header-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const cluster0 = (img: Uint8Array, cs: number) => Buffer.from(img.subarray(0, cs));
const headerOf = (options: CreateOptions): { header: Header; cs: number; bytes: Buffer } => {
  const cs = options.clusterSize ?? 65536;
  const bytes = cluster0(makeImage(options), cs);
  return { header: decodeHeader(bytes), cs, bytes };
};
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

const CREATE_VARIANTS: Array<[string, CreateOptions]> = [
  ['v3 64k', { size: 1n << 30n }],
  ['v2 64k', { size: 1n << 30n, compat: '0.10' }],
  ['v3 512', { size: 1n << 20n, clusterSize: 512 }],
  ['v3 4k', { size: 1n << 20n, clusterSize: 4096 }],
  ['v3 8k', { size: 1n << 20n, clusterSize: 8192 }],
  ['v3 2M', { size: 1n << 30n, clusterSize: 2 << 20 }],
  ['v2 512', { size: 1n << 20n, clusterSize: 512, compat: '0.10' }],
  ['backing+format', { size: 1n << 20n, backingFile: '/images/base.raw', backingFormat: 'raw' }],
  ['v2 backing', { size: 1n << 20n, compat: '0.10', backingFile: 'base.qcow2', backingFormat: 'qcow2' }],
  ['data file raw', { size: 1n << 20n, dataFile: '/data/disk.raw', dataFileRaw: true }],
  ['data file', { size: 1n << 20n, dataFile: '/data/disk.raw' }],
  ['zstd lazy', { size: 1n << 20n, compressionType: 'zstd', lazyRefcounts: true }],
  ['extended l2 refcount 64', { size: 1n << 20n, extendedL2: true, clusterSize: 16384, refcountBits: 64 }],
  ['refcount 1', { size: 1n << 20n, refcountBits: 1 }],
  ['size 0', { size: 0n }],
];

describe('cluster 0 round trip', () => {
  it.each(CREATE_VARIANTS)('created_%s_header_reencodes_byte_for_byte', (_name, options) => {
    const { header, cs, bytes } = headerOf(options);
    expect(hex(encodeHeader(header, cs))).toBe(hex(bytes));
  });

  it.skipIf(SKIP_QEMU).each([
    ['default', ['-o', 'cluster_size=65536'], '1G'],
    ['compat 0.10', ['-o', 'compat=0.10'], '1G'],
    ['512 byte clusters zstd', ['-o', 'cluster_size=512,compression_type=zstd'], '1M'],
    ['backing file and format', ['-u', '-b', '/images/base.raw', '-F', 'raw'], '1M'],
    ['data file raw', ['-o', `data_file=${join(tmp, 'qemu-data.raw')},data_file_raw=on`], '1M'],
    ['extended l2 lazy refcounts', ['-o', 'extended_l2=on,lazy_refcounts=on,refcount_bits=8'], '1M'],
  ] as const)('qemu_img_%s_header_reencodes_byte_for_byte', (name, args, size) => {
    const file = join(tmp, `qemu-${name.replace(/ /g, '-')}.qcow2`);
    const r = runQemuImg(['create', '-q', '-f', 'qcow2', ...args, file, size]);
    expect(r.stderr).toBe('');
    const bytes = readFileSync(file);
    const cs = 2 ** bytes.readUInt32BE(20);
    const c0 = bytes.subarray(0, cs);
    expect(hex(encodeHeader(decodeHeader(c0), cs))).toBe(hex(c0));
  });

  it('v2_header_is_72_bytes_followed_directly_by_extensions', () => {
    const { bytes } = headerOf({ size: 1n << 30n, compat: '0.10', backingFile: 'b', backingFormat: 'raw' });
    expect(getU32(bytes, 72)).toBe(C.QCOW2_EXT_MAGIC_BACKING_FORMAT);
    expect(listExtensions(bytes).map((e) => e.magic)).toEqual([C.QCOW2_EXT_MAGIC_BACKING_FORMAT, 0]);
  });

  it('v3_header_length_is_112_and_compression_type_sits_at_104', () => {
    const { bytes, header } = headerOf({ size: 1n << 20n, compressionType: 'zstd' });
    expect(getU32(bytes, 100)).toBe(112);
    expect(bytes[104]).toBe(1);
    expect(header.compressionType).toBe(C.QCOW2_COMPRESSION_TYPE_ZSTD);
    expect(header.incompatibleFeatures & C.QCOW2_INCOMPAT_COMPRESSION).toBe(C.QCOW2_INCOMPAT_COMPRESSION);
    expect(getU32(bytes, 112)).toBe(C.QCOW2_EXT_MAGIC_FEATURE_TABLE);
  });

  it('keeps_64_bit_fields_exact_size_2_pow_63_minus_512_and_feature_bit_63', () => {
    const { header } = headerOf({ size: 1n << 20n });
    const wild: Header = {
      ...header,
      size: (1n << 63n) - 512n,
      compatibleFeatures: (1n << 63n) | (1n << 62n) | 1n,
      autoclearFeatures: (1n << 63n) | C.QCOW2_AUTOCLEAR_BITMAPS,
      l1TableOffset: 0x7fffffffffff0000n,
      refcountTableOffset: 0x00fffffffffe0000n,
      snapshotsOffset: (1n << 62n) + 65536n,
    };
    const bytes = encodeHeader(wild, 65536);
    expect(hex(bytes.subarray(24, 32))).toBe('7ffffffffffffe00');
    expect(hex(bytes.subarray(80, 88))).toBe('c000000000000001');
    const back = decodeHeader(bytes, { tables: false });
    expect(back.size).toBe((1n << 63n) - 512n);
    expect(back.compatibleFeatures).toBe((1n << 63n) | (1n << 62n) | 1n);
    expect(back.autoclearFeatures).toBe((1n << 63n) | 1n);
    expect(back.l1TableOffset).toBe(0x7fffffffffff0000n);
    expect(back.refcountTableOffset).toBe(0x00fffffffffe0000n);
    expect(back.snapshotsOffset).toBe((1n << 62n) + 65536n);
    expect(hex(encodeHeader(back, 65536))).toBe(hex(bytes));
  });

  it('decode_encode_is_a_fixed_point_for_generated_headers', () => {
    const name = (max: number) => fc.string({ minLength: 1, maxLength: max, unit: fc.constantFrom(...'abcdefghij/._-0123456789'.split('')) });
    const unknownExt = fc.record({
      magic: fc.integer({ min: 1, max: 0xffffffff }).filter((m) => ![
        C.QCOW2_EXT_MAGIC_BACKING_FORMAT, C.QCOW2_EXT_MAGIC_FEATURE_TABLE, C.QCOW2_EXT_MAGIC_CRYPTO_HEADER,
        C.QCOW2_EXT_MAGIC_BITMAPS, C.QCOW2_EXT_MAGIC_DATA_FILE].includes(m)),
      data: fc.uint8Array({ maxLength: 40 }),
    });
    const arb = fc.record({
      version: fc.constantFrom(2, 3),
      clusterBits: fc.integer({ min: 12, max: 21 }),
      size: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      l1Size: fc.integer({ min: 0, max: 0xffffffff }),
      offsets: fc.array(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), { minLength: 3, maxLength: 3 }),
      refcountTableClusters: fc.integer({ min: 0, max: 0xffffffff }),
      nbSnapshots: fc.integer({ min: 0, max: 0xffffffff }),
      zstd: fc.boolean(),
      dirty: fc.boolean(), corrupt: fc.boolean(), dataFileBit: fc.boolean(), extL2: fc.boolean(),
      compat: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      autoclear: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
      refcountOrder: fc.integer({ min: 0, max: 6 }),
      unknownFields: fc.uint8Array({ maxLength: 24 }),
      unknownExtensions: fc.array(unknownExt, { maxLength: 4 }),
      backingFile: fc.option(name(200), { nil: undefined }),
      backingFormat: fc.option(name(15), { nil: undefined }),
      dataFile: fc.option(name(100), { nil: undefined }),
    });
    fc.assert(fc.property(arb, (a) => {
      const v3 = a.version === 3;
      let incompat = 0n;
      if (v3) {
        if (a.dirty) incompat |= C.QCOW2_INCOMPAT_DIRTY;
        if (a.corrupt) incompat |= C.QCOW2_INCOMPAT_CORRUPT;
        if (a.dataFileBit) incompat |= C.QCOW2_INCOMPAT_DATA_FILE;
        if (a.zstd) incompat |= C.QCOW2_INCOMPAT_COMPRESSION;
        if (a.extL2 && a.clusterBits >= 14) incompat |= C.QCOW2_INCOMPAT_EXTL2;
      }
      const h: Header = {
        magic: C.QCOW_MAGIC, version: a.version, backingFileOffset: 0n, backingFileSize: 0, clusterBits: a.clusterBits,
        size: a.size, cryptMethod: 0, l1Size: a.l1Size, l1TableOffset: a.offsets[0]!, refcountTableOffset: a.offsets[1]!,
        refcountTableClusters: a.refcountTableClusters, nbSnapshots: a.nbSnapshots, snapshotsOffset: a.offsets[2]!,
        incompatibleFeatures: incompat,
        compatibleFeatures: v3 ? a.compat : 0n,
        // Bit 0 without a bitmaps extension is legal; the extension itself is exercised elsewhere.
        autoclearFeatures: v3 ? a.autoclear : 0n,
        refcountOrder: v3 ? a.refcountOrder : 4,
        headerLength: v3 ? 112 : 72,
        compressionType: v3 && a.zstd ? 1 : 0,
        unknownFields: v3 ? a.unknownFields : new Uint8Array(0),
        unknownExtensions: a.unknownExtensions,
      };
      if (a.backingFile !== undefined) h.backingFile = a.backingFile;
      if (a.backingFormat !== undefined) h.backingFormat = a.backingFormat;
      if (a.dataFile !== undefined && (incompat & C.QCOW2_INCOMPAT_DATA_FILE) !== 0n) h.dataFile = a.dataFile;
      const cs = 2 ** a.clusterBits;
      const one = encodeHeader(h, cs);
      const d1 = decodeHeader(one, { tables: false });
      expect(d1.size).toBe(h.size);
      expect(d1.l1TableOffset).toBe(h.l1TableOffset);
      expect(d1.refcountTableOffset).toBe(h.refcountTableOffset);
      expect(d1.snapshotsOffset).toBe(h.snapshotsOffset);
      expect(d1.compatibleFeatures).toBe(h.compatibleFeatures);
      expect(d1.autoclearFeatures).toBe(h.autoclearFeatures);
      expect(d1.incompatibleFeatures).toBe(h.incompatibleFeatures);
      expect(d1.backingFile).toBe(h.backingFile);
      expect(d1.backingFormat).toBe(h.backingFormat);
      expect(d1.dataFile).toBe(h.dataFile);
      expect(d1.unknownFields).toEqual(h.unknownFields);
      // Written in reverse, so read back reversed: one rewrite flips the order.
      expect(d1.unknownExtensions).toEqual([...h.unknownExtensions].reverse());
      const two = encodeHeader(d1, cs);
      const three = encodeHeader(decodeHeader(two, { tables: false }), cs);
      expect(hex(three)).toBe(hex(one));
      if (h.unknownExtensions.length < 2) expect(hex(two)).toBe(hex(one));
    }), { seed: 20241125, numRuns: 400 });
  });
});

describe('unknown header fields and extensions', () => {
  const A = { magic: 0x12345678, data: Buffer.from('alpha') };
  const B = { magic: 0x0badcafe, data: Buffer.from('bravo-bravo') };
  const Cx = { magic: 0xdeadbeef, data: Buffer.alloc(0) };
  const END = { magic: 0, data: Buffer.alloc(0) };

  /** A created v3 image rewritten with header_length `hl`, 0xaa unknown fields and the given extensions. */
  function withUnknowns(hl: number, exts: Array<{ magic: number; data: Uint8Array }>): Buffer {
    const base = makeImage({ size: 1n << 30n });
    const featureTable = base.subarray(112 + 8, 112 + 8 + 384);
    return patched(base, (b) => {
      b.fill(0, 100, 65536);
      setU32(b, 100, hl);
      if (hl > 104) b[104] = 0;
      if (hl > 112) b.fill(0xaa, 112, hl);
      b.set(encodeExtensions([{ magic: C.QCOW2_EXT_MAGIC_FEATURE_TABLE, data: featureTable }, ...exts, END]), hl);
    });
  }

  it('unknown_header_fields_between_112_and_header_length_are_kept', () => {
    const x = withUnknowns(136, [A]);
    const h = decodeHeader(x.subarray(0, 65536));
    expect(hex(h.unknownFields)).toBe('aa'.repeat(24));
    const out = encodeHeader(h, 65536);
    expect(getU32(out, 100)).toBe(136);
    expect(hex(out.subarray(112, 136))).toBe('aa'.repeat(24));
    expect(listExtensions(out)[0]!.at).toBe(136);
    const again = decodeHeader(encodeHeader(decodeHeader(out), 65536));
    expect(hex(again.unknownFields)).toBe('aa'.repeat(24));
  });

  it('unknown_extensions_are_kept_and_each_rewrite_reverses_their_order', () => {
    const x = withUnknowns(112, [A, B, Cx]);
    const d1 = decodeHeader(x.subarray(0, 65536));
    expect(d1.unknownExtensions.map((e) => e.magic)).toEqual([A.magic, B.magic, Cx.magic]);
    const once = encodeHeader(d1, 65536);
    expect(listExtensions(once).map((e) => e.magic)).toEqual([C.QCOW2_EXT_MAGIC_FEATURE_TABLE, Cx.magic, B.magic, A.magic, 0]);
    const d2 = decodeHeader(once);
    expect(d2.unknownExtensions).toEqual([Cx, B, A].map((e) => ({ magic: e.magic, data: new Uint8Array(e.data) })));
    const twice = encodeHeader(d2, 65536);
    expect(listExtensions(twice).map((e) => e.magic)).toEqual([C.QCOW2_EXT_MAGIC_FEATURE_TABLE, A.magic, B.magic, Cx.magic, 0]);
    expect(hex(twice)).toBe(hex(x.subarray(0, 65536)));
  });

  it('header_length_104_has_no_compression_type_and_is_rewritten_as_112', () => {
    const x = withUnknowns(104, [A]);
    const h = decodeHeader(x.subarray(0, 65536));
    expect(h.compressionType).toBe(0);
    expect(h.unknownFields.length).toBe(0);
    expect(h.unknownExtensions.map((e) => e.magic)).toEqual([A.magic]);
    const out = encodeHeader(h, 65536);
    expect(getU32(out, 100)).toBe(112);
    expect(listExtensions(out).map((e) => [e.at, e.magic])).toEqual([[112, C.QCOW2_EXT_MAGIC_FEATURE_TABLE], [504, A.magic], [520, 0]]);
  });

  it.skipIf(SKIP_QEMU).each([
    ['header_length 112, three unknown extensions', 112, [A, B, Cx]],
    ['header_length 136, unknown fields and two extensions', 136, [A, B]],
    ['header_length 104', 104, [B]],
  ] as const)('qemu_img_rewrites_%s_exactly_as_encodeHeader_does', (_n, hl, exts) => {
    const x = withUnknowns(hl, [...exts]);
    const file = join(tmp, `amend-${hl}-${exts.length}.qcow2`);
    writeFileSync(file, x);
    // amend makes QEMU rewrite the header (qcow2_update_header) with the lazy-refcounts bit set.
    const r = runQemuImg(['amend', '-f', 'qcow2', '-o', 'lazy_refcounts=on', file]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const theirs = readFileSync(file).subarray(0, 65536);
    const h = decodeHeader(x.subarray(0, 65536));
    const ours = encodeHeader({ ...h, compatibleFeatures: h.compatibleFeatures | C.QCOW2_COMPAT_LAZY_REFCOUNTS }, 65536);
    expect(hex(ours)).toBe(hex(theirs));
  });
});

describe('extension emission', () => {
  const QEMU_TABLE_NAMES = ['dirty bit', 'corrupt bit', 'external data file', 'compression type', 'extended L2 entries',
    'lazy refcounts', 'bitmaps', 'raw external data'];

  it.each([
    ['v3', 512, 3, false], ['v3', 4096, 3, false], ['v3', 8192, 3, true], ['v3', 65536, 3, true], ['v3', 2 << 20, 3, true],
    ['v2', 8192, 2, false], ['v2', 65536, 2, false],
  ] as const)('feature_table_for_%s_with_%i_byte_clusters_present_is_%s', (_v, cs, version, present) => {
    const { header } = headerOf({ size: 1n << 20n, clusterSize: cs, compat: version === 2 ? '0.10' : '1.1' });
    const out = encodeHeader(header, cs);
    const magics = listExtensions(out).map((e) => e.magic);
    expect(magics.includes(C.QCOW2_EXT_MAGIC_FEATURE_TABLE)).toBe(present);
  });

  it('feature_table_is_qemus_8_entries_in_384_bytes', () => {
    const out = encodeHeader(headerOf({ size: 1n << 20n }).header, 65536);
    const ext = listExtensions(out).find((e) => e.magic === C.QCOW2_EXT_MAGIC_FEATURE_TABLE)!;
    expect(ext.length).toBe(384);
    const table = decodeHeader(out).featureTable!;
    expect(table.map((f) => [f.type, f.bit, f.name])).toEqual(C.QEMU_FEATURE_TABLE.map(([t, b, n]) => [t, b, n]));
    expect(table.map((f) => f.name)).toEqual(QEMU_TABLE_NAMES);
    expect(FEATURE_ENTRY_SIZE * table.length).toBe(384);
  });

  it('emits_in_qemu_order_backing_format_data_file_features_bitmaps_unknown_end_then_backing_name', () => {
    const { header } = headerOf({ size: 1n << 20n, dataFile: '/d/disk.raw' });
    const h: Header = {
      ...header,
      backingFile: 'base-image.qcow2',
      backingFormat: 'qcow2',
      autoclearFeatures: C.QCOW2_AUTOCLEAR_BITMAPS,
      bitmaps: { nbBitmaps: 2, bitmapDirectorySize: 80n, bitmapDirectoryOffset: 0x50000n },
      unknownExtensions: [{ magic: 0x11111111, data: new Uint8Array([1]) }, { magic: 0x22222222, data: new Uint8Array([2, 2]) }],
    };
    const out = encodeHeader(h, 65536);
    const exts = listExtensions(out);
    expect(exts.map((e) => e.magic)).toEqual([C.QCOW2_EXT_MAGIC_BACKING_FORMAT, C.QCOW2_EXT_MAGIC_DATA_FILE,
      C.QCOW2_EXT_MAGIC_FEATURE_TABLE, C.QCOW2_EXT_MAGIC_BITMAPS, 0x22222222, 0x11111111, 0]);
    const end = exts[exts.length - 1]!.at + 8;
    expect(getU64(out, 8)).toBe(BigInt(end));
    expect(getU32(out, 16)).toBe('base-image.qcow2'.length);
    expect(Buffer.from(out.subarray(end, end + 16)).toString()).toBe('base-image.qcow2');
    expect(out.subarray(end + 16).every((v) => v === 0)).toBe(true);
    const back = decodeHeader(out);
    expect(back.bitmaps).toEqual(h.bitmaps);
    expect(back.dataFile).toBe('/d/disk.raw');
  });

  it('data_file_name_is_written_only_with_the_external_data_file_bit', () => {
    const { header } = headerOf({ size: 1n << 20n, dataFile: '/d/disk.raw' });
    const without = encodeHeader({ ...header, incompatibleFeatures: 0n }, 65536);
    expect(listExtensions(without).map((e) => e.magic)).not.toContain(C.QCOW2_EXT_MAGIC_DATA_FILE);
    expect(decodeHeader(without).dataFile).toBeUndefined();
  });

  it('extension_data_is_zero_padded_to_a_multiple_of_8', () => {
    const { header } = headerOf({ size: 1n << 20n, clusterSize: 512 });
    const out = encodeHeader({ ...header, unknownExtensions: [{ magic: 0x33333333, data: new Uint8Array([9, 9, 9]) }] }, 512);
    expect(hex(out.subarray(112, 128))).toBe('33333333' + '00000003' + '090909' + '0000000000');
    expect(listExtensions(out).map((e) => e.at)).toEqual([112, 128]);
  });
});

describe('header that does not fit in cluster 0', () => {
  const NO_SPACE = 'Could not update qcow2 header: No space left on device';
  const h512 = () => headerOf({ size: 1n << 20n, clusterSize: 512 }).header;

  function expectNoSpace(fn: () => unknown): void {
    let err: unknown;
    try { fn(); } catch (e) { err = e; }
    expect(Qcow2Error.isInstance(err)).toBe(true);
    const q = err as Qcow2Error;
    expect(q.message).toBe(NO_SPACE);
    expect(q.code).toBe('INVALID_OPTION');
  }

  it('backing_name_ending_exactly_at_the_cluster_end_fits', () => {
    // 112 header + 8 end marker = 120; a 392-byte name ends at 512.
    const out = encodeHeader({ ...h512(), backingFile: 'n'.repeat(392) }, 512);
    expect(getU64(out, 8)).toBe(120n);
    expect(decodeHeader(out).backingFile).toBe('n'.repeat(392));
  });

  it('backing_name_one_byte_past_the_cluster_end_is_refused', () => {
    expectNoSpace(() => encodeHeader({ ...h512(), backingFile: 'n'.repeat(393) }, 512));
  });

  it('unknown_extension_too_big_for_cluster_0_is_refused', () => {
    expectNoSpace(() => encodeHeader({ ...h512(), unknownExtensions: [{ magic: 0x44444444, data: new Uint8Array(400) }] }, 512));
  });

  it('unknown_fields_and_extensions_together_too_big_are_refused', () => {
    expectNoSpace(() => encodeHeader({
      ...h512(), unknownFields: new Uint8Array(200), unknownExtensions: [{ magic: 0x44444444, data: new Uint8Array(190) }],
    }, 512));
  });

  it('feature_table_counts_against_the_space_of_an_8k_cluster', () => {
    const { header } = headerOf({ size: 1n << 20n, clusterSize: 8192 });
    // 112 + 392 (feature table) + 8 (end) = 512: 7680 bytes remain for extensions and name.
    expect(() => encodeHeader({ ...header, unknownExtensions: [{ magic: 0x55555555, data: new Uint8Array(7672) }] }, 8192)).not.toThrow();
    expectNoSpace(() => encodeHeader({ ...header, unknownExtensions: [{ magic: 0x55555555, data: new Uint8Array(7673) }] }, 8192));
  });
});
