// What a source file is, by its first bytes (never by its name: cloud `.img` files are often
// qcow2): a qcow2 image and its version, a compressed container (gzip, xz, zstd), another disk
// format we do not read, or raw.

import * as fs from 'fs';

/** How many leading bytes detectFormat looks at (a tar header's magic ends at byte 262). */
export const DETECT_BYTES = 512;

/** Compressed containers a source may come in. */
export type Compression = 'gzip' | 'xz' | 'zstd';

/** What the leading bytes say. */
export type ContentFormat =
  | { readonly format: 'qcow2'; readonly version: 2 | 3 }
  | { readonly format: 'raw' }
  | { readonly format: Compression }
  /** A format we recognise and do not import: `name` says which, `hint` what to do. */
  | { readonly format: 'unsupported'; readonly name: string; readonly hint: string };

const CONVERT = 'convert it to qcow2 or raw with qemu-img first';

function startsWith(head: Uint8Array, bytes: readonly number[], at = 0): boolean {
  if (head.length < at + bytes.length) return false;
  return bytes.every((b, i) => head[at + i] === b);
}

function ascii(text: string): number[] {
  return [...text].map((c) => c.charCodeAt(0));
}

/** Signatures of formats we refuse, with the name a message uses. */
const FOREIGN: readonly { at: number; bytes: number[]; name: string; hint: string }[] = [
  { at: 0, bytes: ascii('KDMV'), name: 'VMDK', hint: CONVERT },
  { at: 0, bytes: ascii('# Disk DescriptorFile'), name: 'VMDK descriptor', hint: CONVERT },
  { at: 0, bytes: ascii('vhdxfile'), name: 'VHDX', hint: CONVERT },
  { at: 0, bytes: ascii('conectix'), name: 'VHD (vpc)', hint: CONVERT },
  { at: 0x40, bytes: [0x7f, 0x10, 0xda, 0xbe], name: 'VDI', hint: CONVERT },
  { at: 0, bytes: ascii('QED\0'), name: 'QED', hint: CONVERT },
  { at: 0, bytes: ascii('WithoutFreeSpace'), name: 'Parallels', hint: CONVERT },
  { at: 0, bytes: ascii('WithouFreSpacExt'), name: 'Parallels', hint: CONVERT },
  { at: 0, bytes: [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe], name: 'LUKS-encrypted', hint: 'decrypt it first' },
  { at: 0, bytes: ascii('BZh'), name: 'bzip2-compressed', hint: 'decompress it first (bunzip2), or publish it as gzip, xz or zstd' },
  { at: 0, bytes: [0x04, 0x22, 0x4d, 0x18], name: 'lz4-compressed', hint: 'decompress it first (lz4 -d), or publish it as gzip, xz or zstd' },
  { at: 0, bytes: [0x50, 0x4b, 0x03, 0x04], name: 'a zip archive', hint: 'extract the disk image from it first' },
  { at: 257, bytes: ascii('ustar'), name: 'a tar archive', hint: 'extract the disk image from it first (tar -x)' },
];

const QCOW_MAGIC = [0x51, 0x46, 0x49, 0xfb]; // 'QFI\xfb'

/**
 * The format of content whose first bytes are `head` (DETECT_BYTES of them, or all there is).
 * Anything without a known signature is raw, as qemu-img's probing has it.
 */
export function detectFormat(head: Uint8Array): ContentFormat {
  if (startsWith(head, QCOW_MAGIC)) {
    if (head.length < 8) return { format: 'raw' };
    const version = ((head[4]! << 24) | (head[5]! << 16) | (head[6]! << 8) | head[7]!) >>> 0;
    if (version === 2 || version === 3) return { format: 'qcow2', version };
    return {
      format: 'unsupported',
      name: version === 1 ? 'qcow (version 1)' : `qcow version ${version}`,
      hint: version === 1 ? CONVERT : 'it may be damaged, or newer than this tool',
    };
  }
  if (startsWith(head, [0x1f, 0x8b, 0x08])) return { format: 'gzip' };
  if (startsWith(head, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])) return { format: 'xz' };
  // A zstd frame, or a skippable frame (magic 0x184D2A50..5F, little-endian) before one.
  if (startsWith(head, [0x28, 0xb5, 0x2f, 0xfd])) return { format: 'zstd' };
  if (head.length >= 4 && (head[0]! & 0xf0) === 0x50 && head[1] === 0x2a && head[2] === 0x4d && head[3] === 0x18) return { format: 'zstd' };
  for (const f of FOREIGN) if (startsWith(head, f.bytes, f.at)) return { format: 'unsupported', name: f.name, hint: f.hint };
  return { format: 'raw' };
}

/** Words for a detected format, as messages use them (`qcow2 (version 3)`, `xz-compressed`). */
export function describeFormat(f: ContentFormat): string {
  switch (f.format) {
    case 'qcow2':
      return `qcow2 (version ${f.version})`;
    case 'raw':
      return 'raw';
    case 'gzip':
    case 'xz':
    case 'zstd':
      return `${f.format}-compressed`;
    case 'unsupported':
      return f.name;
  }
}

/** Read the leading bytes of a file and detect its format. */
export async function detectFileFormat(file: string): Promise<ContentFormat> {
  // Synchronous: one read of a few hundred bytes, which through fs.promises would load that
  // module, and the readline and stream modules it brings, into every import (about 5 ms).
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(DETECT_BYTES);
    const bytesRead = fs.readSync(fd, buf, 0, DETECT_BYTES, 0);
    return detectFormat(buf.subarray(0, bytesRead));
  } finally {
    fs.closeSync(fd);
  }
}
