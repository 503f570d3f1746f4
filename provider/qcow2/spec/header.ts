// The qcow2 header (cluster 0): fixed fields as field tables for v2 and v3, the header
// extensions, and the backing file name. Decode validates as QEMU's qcow2_do_open does;
// encode lays cluster 0 out exactly as QEMU's qcow2_update_header does.

import * as C from './constants';
import { Qcow2Error, invalidImage } from '../../model/errors';
import { defineStruct, StructOf } from './struct';

/** Version 2 fields (72 bytes). */
export const HEADER_V2 = defineStruct([
  ['u32', 'magic'],
  ['u32', 'version'],
  ['u64', 'backingFileOffset'],
  ['u32', 'backingFileSize'],
  ['u32', 'clusterBits'],
  ['u64', 'size'],
  ['u32', 'cryptMethod'],
  ['u32', 'l1Size'],
  ['u64', 'l1TableOffset'],
  ['u64', 'refcountTableOffset'],
  ['u32', 'refcountTableClusters'],
  ['u32', 'nbSnapshots'],
  ['u64', 'snapshotsOffset'],
] as const);

/** Version 3 fields that follow the v2 part (32 bytes, up to the 104-byte minimum). */
export const HEADER_V3_TAIL = defineStruct([
  ['u64', 'incompatibleFeatures'],
  ['u64', 'compatibleFeatures'],
  ['u64', 'autoclearFeatures'],
  ['u32', 'refcountOrder'],
  ['u32', 'headerLength'],
] as const);

/** Additional fields QEMU knows (present when header_length > 104): 8 bytes up to 112. */
export const HEADER_ADDITIONAL = defineStruct([
  ['u8', 'compressionType'],
  ['pad7', 'padding'],
] as const);

/** A header extension entry's fixed part. */
export const EXTENSION = defineStruct([
  ['u32', 'magic'],
  ['u32', 'length'],
] as const);

export const BITMAPS_EXT = defineStruct([
  ['u32', 'nbBitmaps'],
  ['u32', 'reserved32'],
  ['u64', 'bitmapDirectorySize'],
  ['u64', 'bitmapDirectoryOffset'],
] as const);

export const FEATURE_ENTRY_SIZE = 48;

export type HeaderFields = StructOf<typeof HEADER_V2.fields> & StructOf<typeof HEADER_V3_TAIL.fields> &
  StructOf<typeof HEADER_ADDITIONAL.fields>;

export interface FeatureName { type: number; bit: number; name: string }
export interface BitmapsExtension { nbBitmaps: number; bitmapDirectorySize: bigint; bitmapDirectoryOffset: bigint }
export interface UnknownExtension { magic: number; data: Uint8Array }

/** Everything cluster 0 holds, decoded. */
export interface Header extends HeaderFields {
  /** Bytes in [112, header_length): fields newer than this engine, kept verbatim. */
  unknownFields: Uint8Array;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  featureTable?: FeatureName[];
  bitmaps?: BitmapsExtension;
  /**
   * A bitmaps extension is present but autoclear bit 0 is clear: a writer without bitmap support
   * changed the image, so every bitmap in it is stale (QEMU warns and drops the extension on its
   * next read-write open; the clusters it pointed at are leaked).
   */
  staleBitmaps?: boolean;
  /** Unknown extensions in file order; re-emitted reversed, as QEMU does. */
  unknownExtensions: UnknownExtension[];
}

function decodeName(bytes: Uint8Array): string {
  // Names are byte strings in the file; QEMU treats them as C strings (stop at NUL).
  const nul = bytes.indexOf(0);
  return Buffer.from(nul >= 0 ? bytes.subarray(0, nul) : bytes).toString('utf8');
}

/**
 * Decode and validate the header from the first bytes of the file (at least the header,
 * extensions and backing name: pass cluster 0, or the whole file if it is shorter).
 * `fileSize` bounds reads. Throws Qcow2Error INVALID_IMAGE / UNSUPPORTED with QEMU's wording.
 */
export function decodeHeader(buf: Uint8Array, options: { tables?: boolean; snapshotTable?: boolean } = {}): Header {
  if (buf.length < HEADER_V2.size) {
    if (buf.length >= 4 && new DataView(buf.buffer, buf.byteOffset).getUint32(0) === C.QCOW_MAGIC) {
      throw invalidImage('Could not read qcow2 header: Input/output error (file is truncated)', buf.length);
    }
    throw invalidImage('Image is not in qcow2 format', 0);
  }
  const v2 = HEADER_V2.decode(buf);
  if (v2.magic !== C.QCOW_MAGIC) throw invalidImage('Image is not in qcow2 format', 0);
  if (v2.version < 2 || v2.version > 3) {
    throw new Qcow2Error('UNSUPPORTED', `Unsupported qcow2 version ${v2.version}`, { offset: HEADER_V2.offsets.version });
  }
  if (v2.clusterBits < C.MIN_CLUSTER_BITS || v2.clusterBits > C.MAX_CLUSTER_BITS) {
    throw invalidImage(`Unsupported cluster size: 2^${v2.clusterBits}`, HEADER_V2.offsets.clusterBits);
  }
  const clusterSize = 2 ** v2.clusterBits;

  let tail: StructOf<typeof HEADER_V3_TAIL.fields>;
  let compressionType = 0;
  let unknownFields: Uint8Array = new Uint8Array(0);
  if (v2.version === 2) {
    tail = {
      incompatibleFeatures: 0n, compatibleFeatures: 0n, autoclearFeatures: 0n,
      refcountOrder: 4, headerLength: C.QCOW2_V2_HEADER_LENGTH,
    };
  } else {
    if (buf.length < C.QCOW2_V3_MIN_HEADER_LENGTH) {
      throw invalidImage('Could not read qcow2 header: Input/output error (file is truncated)', buf.length);
    }
    tail = HEADER_V3_TAIL.decode(buf, HEADER_V2.size);
    const hlOff = HEADER_V2.size + HEADER_V3_TAIL.offsets.headerLength!;
    if (tail.headerLength < C.QCOW2_V3_MIN_HEADER_LENGTH) throw invalidImage('qcow2 header too short', hlOff);
    if (tail.headerLength > clusterSize) throw invalidImage('qcow2 header exceeds cluster size', hlOff);
    if (tail.headerLength > buf.length) {
      throw invalidImage('Could not read unknown qcow2 header fields: Input/output error (file is truncated)', buf.length);
    }
    if (tail.headerLength > C.QCOW2_V3_MIN_HEADER_LENGTH) compressionType = buf[C.QCOW2_V3_MIN_HEADER_LENGTH]!;
    if (tail.headerLength > C.QCOW2_V3_HEADER_LENGTH) {
      unknownFields = buf.slice(C.QCOW2_V3_HEADER_LENGTH, tail.headerLength);
    }
  }

  if (v2.backingFileOffset > BigInt(clusterSize)) {
    throw invalidImage('Invalid backing file offset', HEADER_V2.offsets.backingFileOffset);
  }

  const header: Header = { ...v2, ...tail, compressionType, unknownFields, unknownExtensions: [] };
  const extEnd = Math.min(v2.backingFileOffset !== 0n ? Number(v2.backingFileOffset) : clusterSize, clusterSize);
  const v3off = (name: string) => HEADER_V2.size + HEADER_V3_TAIL.offsets[name]!;

  // From here on, QEMU's order (qcow2_do_open): unknown incompatible bits (named from a lenient
  // read of the feature table), compression type, refcount width, subclusters, tables, and only
  // then the extensions and the backing file name.
  const unknownIncompat = tail.incompatibleFeatures & ~C.QCOW2_INCOMPAT_MASK;
  if (unknownIncompat !== 0n) {
    const probe: Header = { ...header, unknownExtensions: [] };
    try {
      readExtensions(probe, buf, tail.headerLength, extEnd, clusterSize);
    } catch {
      // QEMU reads the feature table ignoring errors here; what was read before one still counts.
    }
    throw new Qcow2Error('UNSUPPORTED', unsupportedFeatureMessage(unknownIncompat, probe.featureTable), { offset: v3off('incompatibleFeatures') });
  }
  if (compressionType > C.QCOW2_COMPRESSION_TYPE_ZSTD) {
    throw new Qcow2Error('UNSUPPORTED', `qcow2: unknown compression type: ${compressionType}`, { offset: C.QCOW2_V3_MIN_HEADER_LENGTH });
  }
  const hasCompressionBit = (tail.incompatibleFeatures & C.QCOW2_INCOMPAT_COMPRESSION) !== 0n;
  if (compressionType === C.QCOW2_COMPRESSION_TYPE_ZLIB && hasCompressionBit) {
    throw invalidImage('qcow2: Compression type incompatible feature bit must not be set', v3off('incompatibleFeatures'));
  }
  if (compressionType !== C.QCOW2_COMPRESSION_TYPE_ZLIB && !hasCompressionBit) {
    throw invalidImage('qcow2: Compression type incompatible feature bit must be set', v3off('incompatibleFeatures'));
  }
  if (tail.refcountOrder > C.MAX_REFCOUNT_ORDER) {
    throw invalidImage('Reference count entry width too large; may not exceed 64 bits', v3off('refcountOrder'));
  }
  if (v2.cryptMethod > C.QCOW_CRYPT_LUKS) {
    throw new Qcow2Error('UNSUPPORTED', `Unsupported encryption method ${v2.cryptMethod}`, { offset: HEADER_V2.offsets.cryptMethod });
  }
  if ((tail.incompatibleFeatures & C.QCOW2_INCOMPAT_EXTL2) !== 0n && clusterSize / 32 < 1 << C.MIN_CLUSTER_BITS) {
    throw invalidImage(`Unsupported subcluster size: ${clusterSize / 32}`, v3off('incompatibleFeatures'));
  }
  if (options.tables !== false) validateHeaderTables(header, clusterSize, options.snapshotTable !== false);

  readExtensions(header, buf, tail.headerLength, extEnd, clusterSize);

  if (v2.backingFileOffset !== 0n) {
    const off = Number(v2.backingFileOffset);
    if (v2.backingFileSize > C.MAX_BACKING_FILE_NAME || v2.backingFileSize > clusterSize - off) {
      throw invalidImage('Backing file name too long', HEADER_V2.offsets.backingFileSize);
    }
    if (off + v2.backingFileSize > buf.length) {
      throw invalidImage('Could not read backing file name: Input/output error (file is truncated)', off);
    }
    header.backingFile = decodeName(buf.subarray(off, off + v2.backingFileSize));
  }
  return header;
}

const INT64_MAX = (1n << 63n) - 1n;
const INT_MAX = 0x7fffffffn;

/** qcow2_validate_table: size limit (named at the size field), INT64 overflow and alignment (at the offset field); throws INVALID_IMAGE. */
export function validateTable(cs: number, offset: bigint, entries: bigint, entryLen: number, maxBytes: number, name: string, sizeField: number, offsetField: number): void {
  if (entries > BigInt(Math.floor(maxBytes / entryLen))) throw invalidImage(`${name} too large`, sizeField);
  if (INT64_MAX - entries * BigInt(entryLen) < offset || offset % BigInt(cs) !== 0n) {
    throw invalidImage(`${name} offset invalid`, offsetField);
  }
}

/** Where the tables are, checked as QEMU checks them at open (it never trusts them further). */
function validateHeaderTables(h: Header, cs: number, snapshotTable: boolean): void {
  const f = (name: string) => HEADER_V2.offsets[name]!;
  if (h.refcountTableClusters === 0) {
    throw invalidImage('Image does not contain a reference count table', f('refcountTableClusters'));
  }
  validateTable(cs, h.refcountTableOffset, BigInt(h.refcountTableClusters) * BigInt(cs / 8), 8,
    C.QCOW_MAX_REFTABLE_SIZE, 'Reference count table', f('refcountTableClusters'), f('refcountTableOffset'));
  if (snapshotTable) validateTable(cs, h.snapshotsOffset, BigInt(h.nbSnapshots), 40, 65536 * 40, 'Snapshot table', f('nbSnapshots'), f('snapshotsOffset'));
  if (h.l1Size > C.QCOW_MAX_L1_SIZE / C.L1E_SIZE) throw invalidImage('Active L1 table too large', f('l1Size'));
  validateTable(cs, h.l1TableOffset, BigInt(h.l1Size), 8, C.QCOW_MAX_L1_SIZE, 'Active L1 table', f('l1Size'), f('l1TableOffset'));
  const extl2 = (h.incompatibleFeatures & C.QCOW2_INCOMPAT_EXTL2) !== 0n;
  const coverage = BigInt(cs / (extl2 ? 16 : 8)) * BigInt(cs);
  const needed = (h.size + coverage - 1n) / coverage;
  if (needed > INT_MAX) throw invalidImage('Image is too big', f('size'));
  if (BigInt(h.l1Size) < needed) throw invalidImage('L1 table is too small', f('l1Size'));
  const hasDataFile = (h.incompatibleFeatures & C.QCOW2_INCOMPAT_DATA_FILE) !== 0n;
  if (!hasDataFile && (h.autoclearFeatures & C.QCOW2_AUTOCLEAR_DATA_FILE_RAW) !== 0n) {
    throw invalidImage('data-file-raw requires a data file', HEADER_V2.size + HEADER_V3_TAIL.offsets.autoclearFeatures!);
  }
}

function readExtensions(header: Header, buf: Uint8Array, start: number, end: number, clusterSize: number): void {
  let offset = start;
  while (offset < end) {
    if (offset + EXTENSION.size > buf.length) {
      throw invalidImage('qcow2_read_extension: ERROR: pread fail from offset ' + offset, offset);
    }
    const { magic, length } = EXTENSION.decode(buf, offset);
    const extStart = offset;
    offset += EXTENSION.size;
    if (offset > end || length > end - offset) throw invalidImage('Header extension too large', extStart);
    if (offset + length > buf.length) throw invalidImage('Header extension too large', extStart);
    const data = buf.subarray(offset, offset + length);
    switch (magic) {
      case C.QCOW2_EXT_MAGIC_END:
        return;
      case C.QCOW2_EXT_MAGIC_BACKING_FORMAT:
        if (length > C.MAX_BACKING_FORMAT_NAME) {
          throw invalidImage(`ERROR: ext_backing_format: len=${length} too large (>=16)`, extStart);
        }
        header.backingFormat = decodeName(data);
        break;
      case C.QCOW2_EXT_MAGIC_FEATURE_TABLE: {
        const table: FeatureName[] = [];
        // QEMU reads the extension into a zeroed buffer: a last entry shorter than 48 bytes is
        // padded with zeros, not dropped (iotest 036 adds a table of one 14-byte entry).
        for (let p = 0; p < length; p += FEATURE_ENTRY_SIZE) {
          const entry = new Uint8Array(FEATURE_ENTRY_SIZE);
          entry.set(data.subarray(p, Math.min(length, p + FEATURE_ENTRY_SIZE)));
          table.push({ type: entry[0]!, bit: entry[1]!, name: decodeName(entry.subarray(2)) });
        }
        header.featureTable = table;
        break;
      }
      case C.QCOW2_EXT_MAGIC_CRYPTO_HEADER:
        if (header.cryptMethod !== C.QCOW_CRYPT_LUKS) {
          throw invalidImage('CRYPTO header extension only expected with LUKS encryption method', extStart);
        }
        header.unknownExtensions.push({ magic, data: data.slice() });
        break;
      case C.QCOW2_EXT_MAGIC_BITMAPS: {
        if (length !== BITMAPS_EXT.size) throw invalidImage('bitmaps_ext: Invalid extension length', extStart);
        // Without the autoclear bit the extension is stale: QEMU ignores it (and drops it on write).
        if ((header.autoclearFeatures & C.QCOW2_AUTOCLEAR_BITMAPS) === 0n) {
          header.staleBitmaps = true;
          break;
        }
        const ext = BITMAPS_EXT.decode(data);
        if (ext.reserved32 !== 0) throw invalidImage('bitmaps_ext: Reserved field is not zero', extStart);
        if (ext.nbBitmaps > C.QCOW2_MAX_BITMAPS) {
          throw invalidImage(`bitmaps_ext: Image has ${ext.nbBitmaps} bitmaps, exceeding the QEMU supported maximum of ${C.QCOW2_MAX_BITMAPS}`, extStart);
        }
        if (ext.nbBitmaps === 0) throw invalidImage('found bitmaps extension with zero bitmaps', extStart);
        if (ext.bitmapDirectoryOffset % BigInt(clusterSize) !== 0n) {
          throw invalidImage('bitmaps_ext: invalid bitmap directory offset', extStart);
        }
        if (ext.bitmapDirectorySize > BigInt(QCOW2_MAX_BITMAP_DIRECTORY_SIZE)) {
          throw invalidImage(`bitmaps_ext: bitmap directory size (${ext.bitmapDirectorySize}) exceeds the maximum supported size (${QCOW2_MAX_BITMAP_DIRECTORY_SIZE})`, extStart);
        }
        header.bitmaps = { nbBitmaps: ext.nbBitmaps, bitmapDirectorySize: ext.bitmapDirectorySize, bitmapDirectoryOffset: ext.bitmapDirectoryOffset };
        break;
      }
      case C.QCOW2_EXT_MAGIC_DATA_FILE:
        header.dataFile = decodeName(data);
        break;
      default:
        header.unknownExtensions.push({ magic, data: data.slice() });
        break;
    }
    offset += (length + 7) & ~7;
  }
}

/** QEMU's QCOW2_MAX_BITMAP_DIRECTORY_SIZE (BME_MAX_PHYS_SIZE... 1024 * 65535 bytes). */
export const QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * 65535;

/** `Unsupported qcow2 feature(s): <names>, Unknown incompatible feature: <hex>` as QEMU builds it. */
export function unsupportedFeatureMessage(mask: bigint, table: FeatureName[] | undefined): string {
  const parts: string[] = [];
  let rest = mask;
  for (const f of table ?? []) {
    if (f.name === '') break; // QEMU stops at the first entry without a name
    if (f.type !== C.QCOW2_FEAT_TYPE_INCOMPATIBLE) continue;
    const bit = 1n << BigInt(f.bit);
    if ((rest & bit) !== 0n) {
      parts.push(f.name);
      rest &= ~bit;
    }
  }
  if (rest !== 0n) parts.push(`Unknown incompatible feature: ${rest.toString(16)}`);
  return `Unsupported qcow2 feature(s): ${parts.join(', ')}`;
}

/**
 * Encode cluster 0 exactly as QEMU's qcow2_update_header: fixed header, unknown header fields,
 * backing format, data file name (only with the external-data-file bit), feature table (v3
 * with clusters > 4 KiB), bitmaps, unknown extensions (reversed), end marker, backing name.
 */
export function encodeHeader(h: Header, clusterSize: number): Uint8Array {
  const buf = new Uint8Array(clusterSize);
  const isV3 = h.version === 3;
  const fixedLen = isV3 ? C.QCOW2_V3_HEADER_LENGTH : C.QCOW2_V2_HEADER_LENGTH;
  const fields: HeaderFields = {
    ...h,
    backingFileOffset: 0n,
    backingFileSize: 0,
    headerLength: isV3 ? C.QCOW2_V3_HEADER_LENGTH + h.unknownFields.length : C.QCOW2_V2_HEADER_LENGTH,
  };
  HEADER_V2.encode(fields, buf, 0);
  if (isV3) {
    HEADER_V3_TAIL.encode(fields, buf, HEADER_V2.size);
    HEADER_ADDITIONAL.encode(fields, buf, C.QCOW2_V3_MIN_HEADER_LENGTH);
  }
  let p = fixedLen;
  const need = (n: number) => {
    if (p + n > clusterSize) {
      throw new Qcow2Error('INVALID_OPTION', 'Could not update qcow2 header: No space left on device');
    }
  };
  if (isV3 && h.unknownFields.length) {
    need(h.unknownFields.length);
    buf.set(h.unknownFields, p);
    p += h.unknownFields.length;
  }
  const addExt = (magic: number, data: Uint8Array) => {
    const len = EXTENSION.size + ((data.length + 7) & ~7);
    need(len);
    EXTENSION.encode({ magic, length: data.length }, buf, p);
    buf.set(data, p + EXTENSION.size);
    p += len;
  };
  const enc = (s: string) => Buffer.from(s, 'utf8');
  if (h.backingFormat !== undefined) addExt(C.QCOW2_EXT_MAGIC_BACKING_FORMAT, enc(h.backingFormat));
  if ((h.incompatibleFeatures & C.QCOW2_INCOMPAT_DATA_FILE) !== 0n && h.dataFile !== undefined) {
    addExt(C.QCOW2_EXT_MAGIC_DATA_FILE, enc(h.dataFile));
  }
  if (isV3 && clusterSize > 4096) addExt(C.QCOW2_EXT_MAGIC_FEATURE_TABLE, featureTableBytes());
  if (h.bitmaps && h.bitmaps.nbBitmaps > 0) {
    const b = new Uint8Array(BITMAPS_EXT.size);
    BITMAPS_EXT.encode({ ...h.bitmaps, reserved32: 0 }, b);
    addExt(C.QCOW2_EXT_MAGIC_BITMAPS, b);
  }
  for (let i = h.unknownExtensions.length - 1; i >= 0; i--) {
    const u = h.unknownExtensions[i]!;
    addExt(u.magic, u.data);
  }
  addExt(C.QCOW2_EXT_MAGIC_END, new Uint8Array(0));
  if (h.backingFile !== undefined) {
    const name = enc(h.backingFile);
    need(name.length);
    buf.set(name, p);
    const dv = new DataView(buf.buffer);
    dv.setBigUint64(HEADER_V2.offsets.backingFileOffset!, BigInt(p));
    dv.setUint32(HEADER_V2.offsets.backingFileSize!, name.length);
  }
  return buf;
}

let featureTableCache: Uint8Array | undefined;
function featureTableBytes(): Uint8Array {
  if (!featureTableCache) {
    const t = new Uint8Array(C.QEMU_FEATURE_TABLE.length * FEATURE_ENTRY_SIZE);
    C.QEMU_FEATURE_TABLE.forEach(([type, bit, name], i) => {
      t[i * FEATURE_ENTRY_SIZE] = type;
      t[i * FEATURE_ENTRY_SIZE + 1] = bit;
      t.set(Buffer.from(name, 'ascii'), i * FEATURE_ENTRY_SIZE + 2);
    });
    featureTableCache = t;
  }
  return featureTableCache;
}

/**
 * Where the header ends in the bytes of cluster 0 (as written, or as found in a file): after
 * the extension list's end marker and after the backing file name, whichever is later. Bytes
 * past it are not part of the header. Bounded by `bytes.length`; never throws.
 */
export function headerAreaEnd(bytes: Uint8Array): number {
  if (bytes.length < HEADER_V2.size) return bytes.length;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint32(HEADER_V2.offsets.version!);
  let p = version >= 3 && bytes.length >= C.QCOW2_V3_MIN_HEADER_LENGTH
    ? dv.getUint32(HEADER_V2.size + HEADER_V3_TAIL.offsets.headerLength!) : C.QCOW2_V2_HEADER_LENGTH;
  let end = Math.min(p, bytes.length);
  while (p + EXTENSION.size <= bytes.length) {
    const magic = dv.getUint32(p);
    const length = dv.getUint32(p + 4);
    p += EXTENSION.size;
    if (magic === C.QCOW2_EXT_MAGIC_END) { end = p; break; }
    p += (length + 7) & ~7;
    end = Math.min(p, bytes.length);
  }
  const backingOffset = dv.getBigUint64(HEADER_V2.offsets.backingFileOffset!);
  if (backingOffset !== 0n && backingOffset < BigInt(bytes.length)) {
    end = Math.max(end, Math.min(bytes.length, Number(backingOffset) + dv.getUint32(HEADER_V2.offsets.backingFileSize!)));
  }
  return end;
}
