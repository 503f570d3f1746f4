// Hostile images: valid images with bytes patched, each fixture named after the error it must
// produce. Every refusal is a Qcow2Error with a stable code, the byte offset of the field at
// fault and qemu-img's words; with qemu-img present the same bytes go through
// `qemu-img info -f qcow2 --output=json`, which must fail too (with the same message where we
// claim QEMU's wording). Where qemu-img accepts what we refuse, the fixture says so (`qemu.accepts`)
// and the difference is asserted, not forgotten.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { MemoryBlockFile } from '../../provider/qcow2/io/blockfile';
import * as C from '../../provider/qcow2/spec/constants';
import { Qcow2Error, type Qcow2ErrorCode } from '../../provider/model/errors';
import { Image } from '../../provider/qcow2/meta/image';
import { infoOf } from '../../provider/qcow2/ops/info';
import { encodeExtensions, listExtensions, makeImage, patched, setU32, setU64, setU8 } from '../helpers/images';
import { runQemuImg, skipWithoutQemu } from '../helpers/qemu';

const SKIP_QEMU = skipWithoutQemu('qcow2/hostile');
const tmp = mkdtempSync(join(tmpdir(), 'qcow2-hostile-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

// ------------------------------------------------------------------------------------------------
// Seeds and helpers
// ------------------------------------------------------------------------------------------------

/** v3, 64 KiB clusters, 1 GiB: cluster 0 = header, feature table at 112..504, end marker at 504. */
const BASE = makeImage({ size: 1n << 30n });
/** v3, 512-byte clusters, 1 MiB: no feature table, end marker at 112. */
const SMALL = makeImage({ size: 1n << 20n, clusterSize: 512 });
/** v3, 4 KiB clusters: used for extended-L2 subcluster limits. */
const FOUR_K = makeImage({ size: 1n << 20n, clusterSize: 4096 });
/** v2 (compat 0.10), 64 KiB clusters, 1 GiB: header 72 bytes, end marker at 72. */
const V2 = makeImage({ size: 1n << 30n, compat: '0.10' });

const END = { magic: 0, data: new Uint8Array(0) };

/** BASE with its extension area replaced by `exts` (an end marker is appended). */
function withExtensions(exts: Array<{ magic: number; data: Uint8Array }>, edit?: (b: Buffer) => void): Buffer {
  return patched(BASE, (b) => {
    b.fill(0, 112, 65536);
    b.set(encodeExtensions([...exts, END]), 112);
    edit?.(b);
  });
}

function featureTable(entries: Array<[type: number, bit: number, name: string]>): Buffer {
  const t = Buffer.alloc(entries.length * 48);
  entries.forEach(([type, bit, name], i) => {
    t[i * 48] = type;
    t[i * 48 + 1] = bit;
    t.write(name, i * 48 + 2, 'latin1');
  });
  return t;
}

function bitmapsExt(nb: number, reserved: number, dirSize: bigint, dirOffset: bigint): Buffer {
  const d = Buffer.alloc(24);
  d.writeUInt32BE(nb, 0);
  d.writeUInt32BE(reserved, 4);
  d.writeBigUInt64BE(dirSize, 8);
  d.writeBigUInt64BE(dirOffset, 16);
  return d;
}

interface Expected { code: Qcow2ErrorCode; offset: number | bigint; message: string }

function caught(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

function expectQcow2Error(e: unknown, x: Expected): void {
  expect(e, 'expected a refusal, got success').toBeDefined();
  expect(Qcow2Error.isInstance(e), `not a Qcow2Error: ${String(e)}`).toBe(true);
  const q = e as Qcow2Error;
  expect({ code: q.code, offset: q.offset, message: q.message }).toEqual(x);
}

function openError(bytes: Uint8Array): unknown {
  return caught(() => Image.open(new MemoryBlockFile(bytes), 'hostile.qcow2'));
}

function infoError(bytes: Uint8Array): unknown {
  return caught(() => infoOf(new MemoryBlockFile(bytes), 'hostile.qcow2'));
}

let fileNo = 0;
/** qemu-img's verdict on the bytes: status, and the message after "Could not open '<file>': ". */
function qemuVerdict(bytes: Uint8Array, command: 'info' | 'check' = 'info'): { ok: boolean; message: string } {
  const file = join(tmp, `h${++fileNo}.qcow2`);
  writeFileSync(file, bytes);
  const args = command === 'info' ? ['info', '-f', 'qcow2', '--output=json', file] : ['check', '-f', 'qcow2', file];
  const r = runQemuImg(args);
  rmSync(file, { force: true });
  const prefix = `qemu-img: Could not open '${file}': `;
  const line = r.stderr.split('\n').find((l) => l.startsWith(prefix));
  return { ok: r.status === 0, message: line === undefined ? r.stderr.trim() : line.slice(prefix.length) };
}

// ------------------------------------------------------------------------------------------------
// Named fixtures
// ------------------------------------------------------------------------------------------------

interface Fixture extends Expected {
  name: string;
  bytes: Buffer;
  /** 'open' (default): Image.open refuses (and so info does); 'info': only info reads the structure. */
  stage?: 'open' | 'info';
  /**
   * qemu-img's verdict when it is not "fails with the same message":
   * `accepts` documents a difference (we refuse, qemu-img info opens it), `failsWith` a different wording,
   * `check` runs `qemu-img check` instead of info (info skips that validation).
   */
  qemu?: { accepts: string } | { failsWith: string } | { check: true };
}

const INVALID = 'INVALID_IMAGE' as const;
const UNSUPPORTED = 'UNSUPPORTED' as const;

const FIXTURES: Fixture[] = [
  // --- magic, version, cluster size -----------------------------------------------------------
  { name: 'empty_file_is_not_qcow2', bytes: Buffer.alloc(0), code: INVALID, offset: 0, message: 'Image is not in qcow2 format' },
  { name: 'zero_filled_file_is_not_qcow2', bytes: Buffer.alloc(1 << 20), code: INVALID, offset: 0, message: 'Image is not in qcow2 format' },
  { name: 'wrong_magic_is_not_qcow2', bytes: patched(BASE, (b) => setU8(b, 3, 0xfa)), code: INVALID, offset: 0, message: 'Image is not in qcow2 format' },
  { name: 'rejects_version_0', bytes: patched(BASE, (b) => setU32(b, 4, 0)), code: UNSUPPORTED, offset: 4, message: 'Unsupported qcow2 version 0' },
  { name: 'rejects_version_1', bytes: patched(BASE, (b) => setU32(b, 4, 1)), code: UNSUPPORTED, offset: 4, message: 'Unsupported qcow2 version 1' },
  { name: 'rejects_version_4', bytes: patched(BASE, (b) => setU32(b, 4, 4)), code: UNSUPPORTED, offset: 4, message: 'Unsupported qcow2 version 4' },
  { name: 'rejects_version_u32_max', bytes: patched(BASE, (b) => setU32(b, 4, 0xffffffff)), code: UNSUPPORTED, offset: 4, message: 'Unsupported qcow2 version 4294967295' },
  { name: 'rejects_cluster_bits_8', bytes: patched(BASE, (b) => setU32(b, 20, 8)), code: INVALID, offset: 20, message: 'Unsupported cluster size: 2^8' },
  { name: 'rejects_cluster_bits_22', bytes: patched(BASE, (b) => setU32(b, 20, 22)), code: INVALID, offset: 20, message: 'Unsupported cluster size: 2^22' },
  { name: 'rejects_cluster_bits_0', bytes: patched(BASE, (b) => setU32(b, 20, 0)), code: INVALID, offset: 20, message: 'Unsupported cluster size: 2^0' },
  { name: 'rejects_cluster_bits_u32_max', bytes: patched(BASE, (b) => setU32(b, 20, 0xffffffff)), code: INVALID, offset: 20, message: 'Unsupported cluster size: 2^4294967295' },

  // --- header_length --------------------------------------------------------------------------
  { name: 'header_length_0_is_too_short', bytes: patched(BASE, (b) => setU32(b, 100, 0)), code: INVALID, offset: 100, message: 'qcow2 header too short' },
  { name: 'header_length_103_is_too_short', bytes: patched(BASE, (b) => setU32(b, 100, 103)), code: INVALID, offset: 100, message: 'qcow2 header too short' },
  { name: 'header_length_past_the_cluster_exceeds_cluster_size', bytes: patched(BASE, (b) => setU32(b, 100, 65537)), code: INVALID, offset: 100, message: 'qcow2 header exceeds cluster size' },
  { name: 'huge_header_length_exceeds_cluster_size', bytes: patched(BASE, (b) => setU32(b, 100, 0xffffffff)), code: INVALID, offset: 100, message: 'qcow2 header exceeds cluster size' },
  { name: 'header_length_513_exceeds_a_512_byte_cluster', bytes: patched(SMALL, (b) => setU32(b, 100, 513)), code: INVALID, offset: 100, message: 'qcow2 header exceeds cluster size' },
  { name: 'header_length_120_makes_the_feature_table_data_an_oversized_extension', bytes: patched(BASE, (b) => setU32(b, 100, 120)), code: INVALID, offset: 120, message: 'Header extension too large' },

  // --- header extensions ----------------------------------------------------------------------
  { name: 'extension_length_u32_max_is_header_extension_too_large', bytes: patched(BASE, (b) => setU32(b, 116, 0xffffffff)), code: INVALID, offset: 112, message: 'Header extension too large' },
  { name: 'extension_one_byte_past_cluster_0_is_too_large', bytes: patched(BASE, (b) => setU32(b, 116, 65536 - 120 + 1)), code: INVALID, offset: 112, message: 'Header extension too large' },
  { name: 'second_extension_overflowing_is_too_large', bytes: patched(BASE, (b) => { setU32(b, 504, 0x12345678); setU32(b, 508, 0x7fffffff); }), code: INVALID, offset: 504, message: 'Header extension too large' },
  { name: 'extension_past_the_backing_name_offset_is_too_large', bytes: patched(BASE, (b) => { setU64(b, 8, 200n); setU32(b, 16, 3); }), code: INVALID, offset: 112, message: 'Header extension too large' },
  { name: 'extension_header_straddling_the_area_end_is_too_large', bytes: patched(BASE, (b) => { setU64(b, 8, 116n); setU32(b, 16, 3); }), code: INVALID, offset: 112, message: 'Header extension too large' },
  { name: 'backing_format_of_16_bytes_is_too_large',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_BACKING_FORMAT, data: Buffer.from('0123456789abcdef') }]),
    code: INVALID, offset: 112, message: 'ERROR: ext_backing_format: len=16 too large (>=16)' },
  { name: 'crypto_extension_without_luks_is_refused',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_CRYPTO_HEADER, data: Buffer.alloc(16) }]),
    code: INVALID, offset: 112, message: 'CRYPTO header extension only expected with LUKS encryption method' },
  { name: 'bitmaps_extension_of_8_bytes_has_invalid_length',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_BITMAPS, data: Buffer.alloc(8) }]),
    code: INVALID, offset: 112, message: 'bitmaps_ext: Invalid extension length' },
  { name: 'bitmaps_extension_with_zero_bitmaps_is_refused',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_BITMAPS, data: bitmapsExt(0, 0, 0n, 0n) }], (b) => setU64(b, 88, 1n)),
    code: INVALID, offset: 112, message: 'found bitmaps extension with zero bitmaps' },
  { name: 'bitmaps_extension_reserved_field_must_be_zero',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_BITMAPS, data: bitmapsExt(1, 1, 24n, 0x50000n) }], (b) => setU64(b, 88, 1n)),
    code: INVALID, offset: 112, message: 'bitmaps_ext: Reserved field is not zero' },
  { name: 'bitmaps_extension_with_65536_bitmaps_exceeds_the_maximum',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_BITMAPS, data: bitmapsExt(65536, 0, 24n, 0x50000n) }], (b) => setU64(b, 88, 1n)),
    code: INVALID, offset: 112, message: 'bitmaps_ext: Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535' },
  { name: 'bitmaps_extension_with_misaligned_directory_is_invalid',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_BITMAPS, data: bitmapsExt(1, 0, 24n, 0x50200n) }], (b) => setU64(b, 88, 1n)),
    code: INVALID, offset: 112, message: 'bitmaps_ext: invalid bitmap directory offset' },
  { name: 'bitmap_directory_of_64_MiB_exceeds_qemus_maximum_of_65535_KiB',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_BITMAPS, data: bitmapsExt(1, 0, 64n << 20n, 0x50000n) }], (b) => setU64(b, 88, 1n)),
    code: INVALID, offset: 112, message: 'bitmaps_ext: bitmap directory size (67108864) exceeds the maximum supported size (67107840)' },
  { name: 'bitmap_directory_of_zeros_does_not_satisfy_the_constraints', stage: 'info',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_BITMAPS, data: bitmapsExt(1, 0, 24n, 0x500000n) }], (b) => setU64(b, 88, 1n)),
    code: INVALID, offset: 0x500000, message: "Bitmap '' doesn't satisfy the constraints" },

  // --- backing file name ----------------------------------------------------------------------
  { name: 'backing_offset_beyond_cluster_0_is_invalid', bytes: patched(BASE, (b) => setU64(b, 8, 65537n)), code: INVALID, offset: 8, message: 'Invalid backing file offset' },
  { name: 'backing_offset_2_pow_63_is_invalid', bytes: patched(BASE, (b) => setU64(b, 8, 1n << 63n)), code: INVALID, offset: 8, message: 'Invalid backing file offset' },
  { name: 'backing_name_of_1024_bytes_is_too_long',
    bytes: patched(BASE, (b) => { setU64(b, 8, 1000n); setU32(b, 16, 1024); b.fill(0x61, 1000, 2024); }),
    code: INVALID, offset: 16, message: 'Backing file name too long' },
  { name: 'backing_name_running_past_cluster_0_is_too_long',
    bytes: patched(BASE, (b) => { setU64(b, 8, 65000n); setU32(b, 16, 537); b.fill(0x61, 65000, 65536); }),
    code: INVALID, offset: 16, message: 'Backing file name too long' },
  { name: 'backing_name_at_the_very_end_of_cluster_0_is_too_long',
    bytes: patched(BASE, (b) => { setU64(b, 8, 65536n); setU32(b, 16, 1); }),
    code: INVALID, offset: 16, message: 'Backing file name too long' },

  // --- L1 table -------------------------------------------------------------------------------
  { name: 'l1_size_over_32_MiB_is_active_l1_table_too_large', bytes: patched(BASE, (b) => setU32(b, 36, 0x400001)), code: INVALID, offset: 36, message: 'Active L1 table too large' },
  { name: 'l1_size_u32_max_is_active_l1_table_too_large', bytes: patched(BASE, (b) => setU32(b, 36, 0xffffffff)), code: INVALID, offset: 36, message: 'Active L1 table too large' },
  { name: 'misaligned_l1_offset_is_invalid', bytes: patched(BASE, (b) => setU64(b, 40, 0x30200n)), code: INVALID, offset: 40, message: 'Active L1 table offset invalid' },
  { name: 'huge_l1_offset_is_invalid', bytes: patched(BASE, (b) => setU64(b, 40, 0xffffffffffff0000n)), code: INVALID, offset: 40, message: 'Active L1 table offset invalid' },
  { name: 'l1_offset_whose_end_overflows_int64_is_invalid', bytes: patched(BASE, (b) => { setU32(b, 36, 0x400000); setU64(b, 40, (1n << 63n) - 0x1000000n); }), code: INVALID, offset: 40, message: 'Active L1 table offset invalid' },
  { name: 'misaligned_l1_offset_is_invalid_even_when_l1_is_empty',
    bytes: patched(BASE, (b) => { setU64(b, 24, 0n); setU32(b, 36, 0); setU64(b, 40, 0x200n); }),
    code: INVALID, offset: 40, message: 'Active L1 table offset invalid' },
  { name: 'l1_of_one_entry_for_1_GiB_is_too_small', bytes: patched(BASE, (b) => setU32(b, 36, 1)), code: INVALID, offset: 36, message: 'L1 table is too small' },
  { name: 'empty_l1_for_a_non_empty_disk_is_too_small', bytes: patched(BASE, (b) => setU32(b, 36, 0)), code: INVALID, offset: 36, message: 'L1 table is too small' },
  { name: 'virtual_size_2_pow_62_is_image_too_big', bytes: patched(BASE, (b) => setU64(b, 24, 1n << 62n)), code: INVALID, offset: 24, message: 'Image is too big' },
  { name: 'virtual_size_2_pow_63_minus_512_is_image_too_big', bytes: patched(BASE, (b) => setU64(b, 24, (1n << 63n) - 512n)), code: INVALID, offset: 24, message: 'Image is too big' },

  // --- refcount table -------------------------------------------------------------------------
  { name: 'zero_refcount_table_clusters_means_no_reference_count_table', bytes: patched(BASE, (b) => setU32(b, 56, 0)), code: INVALID, offset: 56, message: 'Image does not contain a reference count table' },
  { name: 'refcount_table_of_129_clusters_is_too_large', bytes: patched(BASE, (b) => setU32(b, 56, 129)), code: INVALID, offset: 56, message: 'Reference count table too large' },
  { name: 'refcount_table_of_u32_max_clusters_is_too_large', bytes: patched(BASE, (b) => setU32(b, 56, 0xffffffff)), code: INVALID, offset: 56, message: 'Reference count table too large' },
  { name: 'misaligned_refcount_table_offset_is_invalid', bytes: patched(BASE, (b) => setU64(b, 48, 0x10200n)), code: INVALID, offset: 48, message: 'Reference count table offset invalid' },
  { name: 'huge_refcount_table_offset_is_invalid', bytes: patched(BASE, (b) => setU64(b, 48, 0xffffffffffff0000n)), code: INVALID, offset: 48, message: 'Reference count table offset invalid' },
  { name: 'refcount_order_7_is_too_wide', bytes: patched(BASE, (b) => setU32(b, 96, 7)), code: INVALID, offset: 96, message: 'Reference count entry width too large; may not exceed 64 bits' },
  { name: 'refcount_order_u32_max_is_too_wide', bytes: patched(BASE, (b) => setU32(b, 96, 0xffffffff)), code: INVALID, offset: 96, message: 'Reference count entry width too large; may not exceed 64 bits' },

  // --- snapshot table -------------------------------------------------------------------------
  { name: 'misaligned_snapshot_table_offset_is_invalid', bytes: patched(BASE, (b) => { setU32(b, 60, 1); setU64(b, 64, 0x10200n); }), code: INVALID, offset: 64, message: 'Snapshot table offset invalid' },
  { name: 'misaligned_snapshot_table_offset_is_invalid_even_without_snapshots', bytes: patched(BASE, (b) => setU64(b, 64, 0x1234n)), code: INVALID, offset: 64, message: 'Snapshot table offset invalid' },
  { name: 'huge_snapshot_table_offset_is_invalid', bytes: patched(BASE, (b) => { setU32(b, 60, 1); setU64(b, 64, 0xffffffffffff0000n); }), code: INVALID, offset: 64, message: 'Snapshot table offset invalid' },
  { name: 'more_than_65536_snapshots_is_snapshot_table_too_large', bytes: patched(BASE, (b) => { setU32(b, 60, 65537); setU64(b, 64, 0x10000n); }), code: INVALID, offset: 60, message: 'Snapshot table too large' },

  // --- feature bits ---------------------------------------------------------------------------
  { name: 'rejects_unknown_incompatible_bit_without_a_name', bytes: patched(BASE, (b) => setU64(b, 72, 1n << 5n)),
    code: UNSUPPORTED, offset: 72, message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: 20' },
  { name: 'rejects_unknown_incompatible_bit_63', bytes: patched(BASE, (b) => setU64(b, 72, (1n << 63n) | (1n << 5n) | C.QCOW2_INCOMPAT_DATA_FILE)),
    code: UNSUPPORTED, offset: 72, message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000020' },
  { name: 'rejects_unknown_incompatible_bit_named_from_the_images_feature_table',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_FEATURE_TABLE, data: featureTable([[0, 5, 'frobnication']]) }], (b) => setU64(b, 72, 1n << 5n)),
    code: UNSUPPORTED, offset: 72, message: 'Unsupported qcow2 feature(s): frobnication' },
  { name: 'rejects_unknown_incompatible_bits_named_in_table_order_then_the_rest_in_hex',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_FEATURE_TABLE, data: featureTable([[1, 7, 'compat seven'], [0, 7, 'seven'], [0, 5, 'five'], [0, 5, 'five again']]) }],
      (b) => setU64(b, 72, (1n << 5n) | (1n << 7n) | (1n << 9n))),
    code: UNSUPPORTED, offset: 72, message: 'Unsupported qcow2 feature(s): seven, five, Unknown incompatible feature: 200' },
  { name: 'feature_name_of_46_bytes_is_printed_whole',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_FEATURE_TABLE, data: featureTable([[0, 6, 'n'.repeat(46)]]) }], (b) => setU64(b, 72, 1n << 6n)),
    code: UNSUPPORTED, offset: 72, message: `Unsupported qcow2 feature(s): ${'n'.repeat(46)}` },
  { name: 'feature_table_ends_at_the_first_entry_with_an_empty_name',
    bytes: withExtensions([{ magic: C.QCOW2_EXT_MAGIC_FEATURE_TABLE, data: featureTable([[0, 5, 'five'], [0, 6, ''], [0, 7, 'seven']]) }],
      (b) => setU64(b, 72, (1n << 5n) | (1n << 7n))),
    code: UNSUPPORTED, offset: 72, message: 'Unsupported qcow2 feature(s): five, Unknown incompatible feature: 80' },
  { name: 'unknown_compression_type_2', bytes: patched(BASE, (b) => setU8(b, 104, 2)), code: UNSUPPORTED, offset: 104, message: 'qcow2: unknown compression type: 2' },
  { name: 'zstd_without_the_compression_bit_is_refused', bytes: patched(BASE, (b) => setU8(b, 104, 1)), code: INVALID, offset: 72, message: 'qcow2: Compression type incompatible feature bit must be set' },
  { name: 'compression_bit_with_zlib_is_refused', bytes: patched(BASE, (b) => setU64(b, 72, C.QCOW2_INCOMPAT_COMPRESSION)), code: INVALID, offset: 72, message: 'qcow2: Compression type incompatible feature bit must not be set' },
  { name: 'extended_l2_with_4k_clusters_has_unsupported_subcluster_size', bytes: patched(FOUR_K, (b) => setU64(b, 72, C.QCOW2_INCOMPAT_EXTL2)),
    code: INVALID, offset: 72, message: 'Unsupported subcluster size: 128' },
  { name: 'extended_l2_with_512_byte_clusters_has_unsupported_subcluster_size', bytes: patched(SMALL, (b) => setU64(b, 72, C.QCOW2_INCOMPAT_EXTL2)),
    code: INVALID, offset: 72, message: 'Unsupported subcluster size: 16' },
  { name: 'raw_bit_without_data_file_bit_requires_a_data_file', bytes: patched(BASE, (b) => setU64(b, 88, C.QCOW2_AUTOCLEAR_DATA_FILE_RAW)),
    code: INVALID, offset: 88, message: 'data-file-raw requires a data file', qemu: { check: true } },

  // --- encryption (not implemented by this engine) ----------------------------------------------
  { name: 'aes_encrypted_image_is_unsupported', bytes: patched(BASE, (b) => setU32(b, 32, 1)),
    code: UNSUPPORTED, offset: 32, message: 'Encrypted images are not supported (crypt_method 1); use qemu-img',
    qemu: { accepts: 'qemu-img info opens AES images without a key (QCRYPTO_BLOCK_OPEN_NO_IO); this engine does not implement encryption' } },
  { name: 'unknown_crypt_method_3_is_unsupported', bytes: patched(BASE, (b) => setU32(b, 32, 3)),
    code: UNSUPPORTED, offset: 32, message: 'Unsupported encryption method 3',
    qemu: { failsWith: 'Unsupported encryption method 3' } },

  // --- first error wins, in qcow2_do_open's order -----------------------------------------------
  { name: 'unknown_incompatible_bit_is_reported_even_when_extensions_are_broken',
    bytes: patched(BASE, (b) => { setU32(b, 116, 0xffffffff); setU64(b, 72, 1n << 5n); }),
    code: UNSUPPORTED, offset: 72, message: 'Unsupported qcow2 feature(s): Unknown incompatible feature: 20' },
  { name: 'refcount_width_is_checked_before_extensions_are_read',
    bytes: patched(BASE, (b) => { setU32(b, 116, 0xffffffff); setU32(b, 96, 7); }),
    code: INVALID, offset: 96, message: 'Reference count entry width too large; may not exceed 64 bits' },
  { name: 'l1_table_size_is_checked_before_extensions_are_read',
    bytes: patched(BASE, (b) => { setU32(b, 116, 0xffffffff); setU32(b, 36, 1); }),
    code: INVALID, offset: 36, message: 'L1 table is too small' },
  { name: 'l1_table_size_is_checked_before_the_backing_name',
    bytes: patched(BASE, (b) => { setU64(b, 8, 1000n); setU32(b, 16, 1024); setU32(b, 36, 1); }),
    code: INVALID, offset: 36, message: 'L1 table is too small' },
];

describe('hostile fixtures', () => {
  it('fixture_names_are_unique', () => {
    expect(new Set(FIXTURES.map((f) => f.name)).size).toBe(FIXTURES.length);
  });

  describe.each(FIXTURES)('$name', (f) => {
    const expected: Expected = { code: f.code, offset: f.offset, message: f.message };

    if (f.stage === 'info') {
      it('info_refuses_it', () => expectQcow2Error(infoError(f.bytes), expected));
    } else {
      it('open_refuses_it', () => expectQcow2Error(openError(f.bytes), expected));
      it('info_refuses_it_the_same_way', () => expectQcow2Error(infoError(f.bytes), expected));
    }

    it.skipIf(SKIP_QEMU)('qemu_img_agrees', () => {
      const q = f.qemu;
      if (q !== undefined && 'accepts' in q) {
        expect(qemuVerdict(f.bytes), `documented difference: ${q.accepts}`).toEqual({ ok: true, message: '' });
        return;
      }
      const v = qemuVerdict(f.bytes, q !== undefined && 'check' in q ? 'check' : 'info');
      expect(v.ok).toBe(false);
      expect(v.message).toBe(q !== undefined && 'failsWith' in q ? q.failsWith : f.message);
    });
  });

  it.skipIf(SKIP_QEMU)('raw_bit_without_data_file_bit_is_accepted_by_qemu_img_info_which_skips_that_check', () => {
    // qemu-img info (>= 7.2.13) does not open the data file, and the check lives there.
    expect(qemuVerdict(patched(BASE, (b) => setU64(b, 88, C.QCOW2_AUTOCLEAR_DATA_FILE_RAW))).ok).toBe(true);
  });

  it.skipIf(SKIP_QEMU)('luks_crypt_method_without_crypto_header_fails_in_qemu_img_too', () => {
    // qemu-img 7.2 crashes on this one (SIGSEGV); it does not open it either.
    const bytes = patched(BASE, (b) => setU32(b, 32, 2));
    expectQcow2Error(openError(bytes), { code: UNSUPPORTED, offset: 32, message: 'Encrypted images are not supported (crypt_method 2); use qemu-img' });
    expect(qemuVerdict(bytes).ok).toBe(false);
  });
});

// ------------------------------------------------------------------------------------------------
// Truncated files
// ------------------------------------------------------------------------------------------------

const TRUNCATED_HEADER = 'Could not read qcow2 header: Input/output error (file is truncated)';
const TRUNCATED_FIELDS = 'Could not read unknown qcow2 header fields: Input/output error (file is truncated)';
const TRUNCATED_NAME = 'Could not read backing file name: Input/output error (file is truncated)';
const preadFail = (at: number) => `qcow2_read_extension: ERROR: pread fail from offset ${at}`;

/**
 * What opening the first `n` bytes of a well-formed image must give: the first structure of
 * cluster 0 that is cut short names the error; once cluster 0's header, extensions and backing
 * name are complete the image opens (open reads nothing else).
 */
function expectedForPrefix(img: Uint8Array, n: number): Expected | 'opens' {
  if (n < 4) return { code: INVALID, offset: 0, message: 'Image is not in qcow2 format' };
  const version = Buffer.from(img).readUInt32BE(4);
  if (n < 72 || (version === 3 && n < 104)) return { code: INVALID, offset: n, message: TRUNCATED_HEADER };
  const hl = version === 3 ? Buffer.from(img).readUInt32BE(100) : 72;
  if (n < hl) return { code: INVALID, offset: n, message: TRUNCATED_FIELDS };
  for (const e of listExtensions(img)) {
    if (n < e.at + 8) return { code: INVALID, offset: e.at, message: preadFail(e.at) };
    if (n < e.at + 8 + e.length) return { code: INVALID, offset: e.at, message: 'Header extension too large' };
  }
  const backingOffset = Number(Buffer.from(img).readBigUInt64BE(8));
  const backingSize = Buffer.from(img).readUInt32BE(16);
  if (backingOffset !== 0 && n < backingOffset + backingSize) return { code: INVALID, offset: backingOffset, message: TRUNCATED_NAME };
  return 'opens';
}

function checkPrefix(img: Uint8Array, n: number): void {
  const want = expectedForPrefix(img, n);
  const e = openError(img.subarray(0, n));
  if (want === 'opens') expect(e).toBeUndefined();
  else expectQcow2Error(e, want);
}

/** Reads past the end of a file return zeros in QEMU, so qemu-img opens what holds valid values. */
function qemuAcceptsPrefix(n: number, threshold: number): boolean {
  return n >= threshold;
}

describe('truncated files', () => {
  const PREFIXES = Array.from({ length: 201 }, (_, i) => i);

  it.each(PREFIXES)('v3_64k_image_cut_to_%i_bytes_is_refused_as_truncated', (n) => checkPrefix(BASE, n));
  it.each(PREFIXES)('v2_image_cut_to_%i_bytes_is_refused_as_truncated_or_opens', (n) => checkPrefix(V2, n));
  it.each(PREFIXES)('v3_512_byte_cluster_image_cut_to_%i_bytes_is_refused_as_truncated_or_opens', (n) => checkPrefix(SMALL, n));

  it('v3_prefix_expectations_cover_every_region', () => {
    const kinds = new Set(PREFIXES.map((n) => { const w = expectedForPrefix(BASE, n); return w === 'opens' ? w : w.message.slice(0, 20); }));
    expect(kinds.size).toBe(5); // not qcow2, header, unknown fields, pread fail, extension too large
    expect(expectedForPrefix(V2, 200)).toBe('opens');
  });

  it.skipIf(SKIP_QEMU)('qemu_img_reads_past_the_end_as_zeros_and_opens_v3_prefixes_from_104_bytes', () => {
    const disagree: number[] = [];
    for (const n of PREFIXES) {
      const v = qemuVerdict(BASE.subarray(0, n));
      expect(v.ok, `prefix ${n}: ${v.message}`).toBe(qemuAcceptsPrefix(n, 104));
      if (v.ok && expectedForPrefix(BASE, n) !== 'opens') disagree.push(n);
    }
    // Documented difference: we refuse a truncated cluster 0 that qemu-img reads as zeros.
    expect(disagree).toEqual(PREFIXES.filter((n) => n >= 104));
  });

  it.skipIf(SKIP_QEMU)('qemu_img_opens_v2_prefixes_from_60_bytes', () => {
    for (const n of PREFIXES) {
      const v = qemuVerdict(V2.subarray(0, n));
      expect(v.ok, `prefix ${n}: ${v.message}`).toBe(qemuAcceptsPrefix(n, 60));
    }
  });

  describe('inside extensions and the backing name', () => {
    const img = makeImage({
      size: 1n << 20n, clusterSize: 4096, backingFile: '/images/base-disk.qcow2', backingFormat: 'qcow2',
    });
    const withUnknown = patched(img, (b) => {
      const exts = listExtensions(img);
      const end = exts[exts.length - 1]!.at;
      const name = b.subarray(end + 8, end + 8 + 23).toString();
      b.fill(0, 112, 4096);
      const block = encodeExtensions([
        { magic: C.QCOW2_EXT_MAGIC_BACKING_FORMAT, data: Buffer.from('qcow2') },
        { magic: 0x77777777, data: Buffer.from('unknown extension payload') },
        END,
      ]);
      b.set(block, 112);
      b.write(name, 112 + block.length);
      setU64(b, 8, BigInt(112 + block.length));
    });
    const last = Number(withUnknown.readBigUInt64BE(8)) + withUnknown.readUInt32BE(16);
    const cuts = Array.from({ length: last - 100 + 2 }, (_, i) => 100 + i);

    it('fixture_has_backing_format_unknown_extension_end_and_name', () => {
      expect(listExtensions(withUnknown).map((e) => e.magic)).toEqual([C.QCOW2_EXT_MAGIC_BACKING_FORMAT, 0x77777777, 0]);
      expect(Image.open(new MemoryBlockFile(withUnknown)).header.backingFile).toBe('/images/base-disk.qcow2');
    });

    it.each(cuts)('cut_at_%i_bytes_names_the_structure_cut_short', (n) => checkPrefix(withUnknown, n));

    it.skipIf(SKIP_QEMU)('qemu_img_opens_every_such_cut_from_104_bytes', () => {
      for (const n of cuts.filter((c) => c % 7 === 0 || c === last - 1)) {
        expect(qemuVerdict(withUnknown.subarray(0, n)).ok, `cut ${n}`).toBe(n >= 104);
      }
    });
  });
});

// ------------------------------------------------------------------------------------------------
// Noise after the magic
// ------------------------------------------------------------------------------------------------

const KNOWN_MESSAGES = [
  /^Unsupported qcow2 version \d+$/, /^Unsupported cluster size: 2\^\d+$/, /^qcow2 header too short$/,
  /^qcow2 header exceeds cluster size$/, /^Invalid backing file offset$/, /^Backing file name too long$/,
  /^Header extension too large$/, /^qcow2: /, /^Unsupported qcow2 feature\(s\): /, /^Reference count entry width too large/,
  /too large$/, /offset invalid$/, /^L1 table is too small$/, /^Image does not contain a reference count table$/,
  /^Image is too big$/, /^Encrypted images are not supported/, /^ERROR: ext_backing_format/, /^CRYPTO header extension/,
  /^bitmaps_ext: /, /^found bitmaps extension/, /^data-file-raw requires a data file$/, /^Unsupported subcluster size/,
  /truncated\)$/, /^qcow2_read_extension: /,
];

function noise(seed: number, length: number, prefix: (b: Buffer) => void): Buffer {
  let s = seed >>> 0;
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    b[i] = s >>> 24;
  }
  b.writeUInt32BE(C.QCOW_MAGIC, 0);
  prefix(b);
  return b;
}

const NOISE = [
  ...Array.from({ length: 20 }, (_, i) => ({ name: `random_bytes_after_the_magic_seed_${i}`, bytes: noise(i + 1, i % 2 ? 512 : 70000, () => {}) })),
  ...Array.from({ length: 20 }, (_, i) => ({
    name: `random_v3_fields_after_a_plausible_prefix_seed_${i}`,
    bytes: noise(100 + i, 70000, (b) => { setU32(b, 4, 3); setU32(b, 20, 16); setU32(b, 100, 112); setU8(b, 104, 0); setU64(b, 8, 0n); }),
  })),
];

describe('noise after the magic', () => {
  describe.each(NOISE)('$name', ({ bytes }) => {
    it('is_refused_with_a_qcow2_error_naming_an_offset_inside_the_header_or_a_structure', () => {
      const e = openError(bytes);
      expect(Qcow2Error.isInstance(e), `not refused with a Qcow2Error: ${String(e)}`).toBe(true);
      const q = e as Qcow2Error;
      expect(['INVALID_IMAGE', 'UNSUPPORTED']).toContain(q.code);
      expect(q.offset).toBeDefined();
      expect(KNOWN_MESSAGES.some((r) => r.test(q.message)), q.message).toBe(true);
    });

    it.skipIf(SKIP_QEMU)('qemu_img_refuses_it_too', () => {
      expect(qemuVerdict(bytes).ok).toBe(false);
    });
  });
});
