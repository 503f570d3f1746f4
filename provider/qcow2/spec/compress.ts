// Compressed clusters (read side; the descriptor is parsed in l2.ts): decompression as QEMU's
// qcow2-threads.c. zlib is raw deflate (no zlib header), zstd is one zstd frame (decoded by
// fzstd, pure JS). Both stop at the cluster size and ignore the sector padding after the
// stream, as QEMU does.

import { Qcow2Error } from '../../model/errors';
import { QCOW2_COMPRESSION_TYPE_ZSTD } from './constants';

// zlib is loaded on the first compressed cluster: most images have none, and every command pays
// for a module loaded at start-up.
const zlib = () => require('zlib') as typeof import('zlib');

/** Decompress one cluster. Throws INVALID_IMAGE (QEMU: EIO) when the data does not decode to a full cluster. */
export function decompressCluster(data: Uint8Array, clusterSize: number, compressionType: number, at?: bigint): Buffer {
  let out: Buffer;
  try {
    if (compressionType === QCOW2_COMPRESSION_TYPE_ZSTD) {
      out = zstdDecompress(data, clusterSize);
    } else {
      const z = zlib();
      out = z.inflateRawSync(data, { finishFlush: z.constants.Z_SYNC_FLUSH, maxOutputLength: clusterSize });
    }
  } catch (e) {
    if (Qcow2Error.isInstance(e)) throw e;
    throw new Qcow2Error('INVALID_IMAGE', `Could not decompress the compressed cluster at offset 0x${(at ?? 0n).toString(16)}: ${(e as Error).message}`, { offset: at ?? 0n, cause: e });
  }
  if (out.length < clusterSize) {
    throw new Qcow2Error('INVALID_IMAGE', `Compressed cluster at offset 0x${(at ?? 0n).toString(16)} decodes to ${out.length} bytes, not a whole cluster`, { offset: at ?? 0n });
  }
  return out.length === clusterSize ? out : out.subarray(0, clusterSize);
}

type Fzstd = { decompress(d: Uint8Array, out?: Uint8Array): Uint8Array };
let fzstd: Fzstd | null | undefined;

function zstdDecompress(data: Uint8Array, clusterSize: number): Buffer {
  if (fzstd === undefined) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      fzstd = require('fzstd') as Fzstd;
    } catch {
      fzstd = null;
    }
  }
  if (fzstd === null) {
    throw new Qcow2Error('UNSUPPORTED', 'This image has zstd-compressed clusters and the zstd decoder (npm package fzstd) is not installed; install it, or convert the image with qemu-img');
  }
  const frame = data.subarray(0, zstdFrameLength(data));
  const out = new Uint8Array(clusterSize);
  const r = fzstd.decompress(frame, out);
  return Buffer.from(r.buffer, r.byteOffset, r.byteLength);
}

/**
 * Length of the first zstd frame (RFC 8878 §3.1.1): QEMU's zstd stream is followed by padding
 * to a 512-byte sector, which a whole-input decoder would try to read as another frame.
 */
export function zstdFrameLength(d: Uint8Array): number {
  const bad = (why: string) => new Qcow2Error('INVALID_IMAGE', `zstd compressed cluster: ${why}`);
  if (d.length < 6 || d[0] !== 0x28 || d[1] !== 0xb5 || d[2] !== 0x2f || d[3] !== 0xfd) throw bad('bad frame magic');
  const fhd = d[4]!;
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictFlag = fhd & 3;
  let p = 5 + (single ? 0 : 1) + [0, 1, 2, 4][dictFlag]! + [single ? 1 : 0, 2, 4, 8][fcsFlag]!;
  for (;;) {
    if (p + 3 > d.length) throw bad('truncated block header');
    const bh = d[p]! | (d[p + 1]! << 8) | (d[p + 2]! << 16);
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >> 3;
    p += 3 + (type === 1 ? 1 : size); // RLE blocks carry one byte
    if (type === 3) throw bad('reserved block type');
    if (last) break;
  }
  p += checksum ? 4 : 0;
  if (p > d.length) throw bad('truncated frame');
  return p;
}
