// File comparison helpers for the conformance suites: chunked byte comparison with a report that
// names the qcow2 structure a differing byte lives in (located in the reference image's layout).

import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, readSync } from 'node:fs';

const CHUNK = 1 << 20;

function readAt(fd: number, length: number, position: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, buf, done, length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done === length ? buf : buf.subarray(0, done);
}

export function md5File(path: string): string {
  return createHash('md5').update(readFileSync(path)).digest('hex');
}

const hex = (n: number | bigint): string => `0x${n.toString(16)}`;
const hexBytes = (b: Buffer): string => [...b].map((x) => x.toString(16).padStart(2, '0')).join(' ');

export interface DiffRun {
  start: number;
  end: number; // exclusive
}

export interface FileDiff {
  sizeA: number;
  sizeB: number;
  /** First differing offset (or the shorter size when one file is a prefix of the other). */
  first: number;
  /** Differing byte runs within the common length (first few only), and the total differing bytes. */
  runs: DiffRun[];
  differingBytes: number;
}

/** Compare two files byte for byte (chunked). undefined when identical. */
export function diffFiles(pathA: string, pathB: string, maxRuns = 8): FileDiff | undefined {
  const fa = openSync(pathA, 'r');
  const fb = openSync(pathB, 'r');
  try {
    const sizeA = fstatSync(fa).size;
    const sizeB = fstatSync(fb).size;
    const common = Math.min(sizeA, sizeB);
    const runs: DiffRun[] = [];
    let differingBytes = 0;
    let first = -1;
    let open: DiffRun | undefined;
    for (let pos = 0; pos < common; pos += CHUNK) {
      const len = Math.min(CHUNK, common - pos);
      const a = readAt(fa, len, pos);
      const b = readAt(fb, len, pos);
      if (a.equals(b)) {
        if (open) {
          if (runs.length < maxRuns) runs.push(open);
          open = undefined;
        }
        continue;
      }
      for (let i = 0; i < len; i++) {
        if (a[i] !== b[i]) {
          differingBytes++;
          if (first < 0) first = pos + i;
          if (open && open.end === pos + i) open.end++;
          else {
            if (open && runs.length < maxRuns) runs.push(open);
            open = { start: pos + i, end: pos + i + 1 };
          }
        }
      }
    }
    if (open && runs.length < maxRuns) runs.push(open);
    if (first < 0 && sizeA === sizeB) return undefined;
    if (first < 0) first = common;
    return { sizeA, sizeB, first, runs: runs.slice(0, maxRuns), differingBytes };
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
}

const HEADER_FIELDS: Array<[number, number, string]> = [
  [0, 4, 'magic'],
  [4, 4, 'version'],
  [8, 8, 'backing_file_offset'],
  [16, 4, 'backing_file_size'],
  [20, 4, 'cluster_bits'],
  [24, 8, 'size'],
  [32, 4, 'crypt_method'],
  [36, 4, 'l1_size'],
  [40, 8, 'l1_table_offset'],
  [48, 8, 'refcount_table_offset'],
  [56, 4, 'refcount_table_clusters'],
  [60, 4, 'nb_snapshots'],
  [64, 8, 'snapshots_offset'],
  [72, 8, 'incompatible_features'],
  [80, 8, 'compatible_features'],
  [88, 8, 'autoclear_features'],
  [96, 4, 'refcount_order'],
  [100, 4, 'header_length'],
  [104, 1, 'compression_type'],
  [105, 7, 'header padding'],
];

interface Region {
  start: number;
  end: number;
  describe(offset: number): string;
}

/** A structural map of a qcow2 file (the reference image), for naming offsets. */
export class Qcow2Layout {
  readonly regions: Region[] = [];
  readonly clusterSize: number = 0;
  readonly fileSize: number;
  readonly error?: string;

  constructor(path: string) {
    const fd = openSync(path, 'r');
    try {
      this.fileSize = fstatSync(fd).size;
      const h = readAt(fd, 112, 0);
      if (h.length < 72 || h.readUInt32BE(0) !== 0x514649fb) {
        this.error = 'not a qcow2 file';
        return;
      }
      const version = h.readUInt32BE(4);
      const clusterBits = h.readUInt32BE(20);
      if (clusterBits < 9 || clusterBits > 21) {
        this.error = `bad cluster_bits ${clusterBits}`;
        return;
      }
      const cs = 1 << clusterBits;
      this.clusterSize = cs;
      const headerLength = version >= 3 && h.length >= 104 ? h.readUInt32BE(100) : 72;
      const l1Size = h.readUInt32BE(36);
      const l1Offset = Number(h.readBigUInt64BE(40));
      const rtOffset = Number(h.readBigUInt64BE(48));
      const rtClusters = h.readUInt32BE(56);
      const refcountOrder = version >= 3 ? h.readUInt32BE(96) : 4;
      const refBits = 1 << refcountOrder;
      const incompat = version >= 3 ? h.readBigUInt64BE(72) : 0n;
      const extL2 = (incompat & (1n << 4n)) !== 0n;
      const l2EntrySize = extL2 ? 16 : 8;

      this.regions.push({
        start: 0,
        end: cs,
        describe: (o) => {
          if (o < headerLength) {
            for (const [off, len, name] of HEADER_FIELDS) {
              if (o >= off && o < off + len) return `header field ${name} (byte ${o - off} of ${len})`;
            }
            return `header byte ${o} (unknown field area below header_length ${headerLength})`;
          }
          return `cluster 0 after the ${headerLength}-byte header (header extensions / backing file name / padding)`;
        },
      });

      if (rtClusters > 0 && rtOffset > 0) {
        const rtBytes = rtClusters * cs;
        this.regions.push({
          start: rtOffset,
          end: rtOffset + rtBytes,
          describe: (o) => {
            const i = Math.floor((o - rtOffset) / 8);
            return `refcount table (${hex(rtOffset)}) entry ${i} (refblock covering host clusters from ${i * ((cs * 8) / refBits)})`;
          },
        });
        const rt = readAt(fd, rtBytes, rtOffset);
        const perBlock = (cs * 8) / refBits;
        for (let i = 0; i + 8 <= rt.length; i += 8) {
          const e = Number(rt.readBigUInt64BE(i) & 0xfffffffffffffe00n);
          if (e === 0) continue;
          const idx = i / 8;
          this.regions.push({
            start: e,
            end: e + cs,
            describe: (o) => {
              const bit = (o - e) * 8;
              const entry = Math.floor(bit / refBits);
              const hostCluster = idx * perBlock + entry;
              return `refcount block #${idx} (${hex(e)}) entry ${entry} = refcount of host cluster ${hostCluster} (${hex(hostCluster * cs)}), ${refBits}-bit entries`;
            },
          });
        }
      }

      if (l1Size > 0 && l1Offset > 0) {
        const l1Bytes = l1Size * 8;
        const l1Alloc = Math.ceil(l1Bytes / cs) * cs;
        const l2Covers = (cs / l2EntrySize) * cs;
        this.regions.push({
          start: l1Offset,
          end: l1Offset + l1Alloc,
          describe: (o) => {
            const i = Math.floor((o - l1Offset) / 8);
            if (i >= l1Size) return `L1 table (${hex(l1Offset)}) tail after its ${l1Size} entries`;
            return `L1 table (${hex(l1Offset)}) entry ${i} (guest ${hex(BigInt(i) * BigInt(l2Covers))})`;
          },
        });
        const l1 = readAt(fd, l1Bytes, l1Offset);
        for (let i = 0; i + 8 <= l1.length; i += 8) {
          const e = Number(l1.readBigUInt64BE(i) & 0x00fffffffffffe00n);
          if (e === 0) continue;
          const l1i = i / 8;
          this.regions.push({
            start: e,
            end: e + cs,
            describe: (o) => {
              const j = Math.floor((o - e) / l2EntrySize);
              const guest = BigInt(l1i) * BigInt(l2Covers) + BigInt(j) * BigInt(cs);
              return `L2 table for L1[${l1i}] (${hex(e)}) entry ${j}${extL2 ? ' (extended, 16 B)' : ''} (guest ${hex(guest)})`;
            },
          });
        }
      }
      this.regions.sort((a, b) => a.start - b.start);
    } finally {
      closeSync(fd);
    }
  }

  describe(offset: number): string {
    if (this.error) return `(reference layout unavailable: ${this.error})`;
    if (offset >= this.fileSize) return `past the end of the reference file (${hex(this.fileSize)})`;
    for (const r of this.regions) if (offset >= r.start && offset < r.end) return r.describe(offset);
    const cluster = Math.floor(offset / this.clusterSize);
    return `host cluster ${cluster} (${hex(cluster * this.clusterSize)}): not header/refcount/L1/L2 metadata (data cluster or unreferenced)`;
  }
}

/** A multi-line report of how `ours` differs from the reference `ref` (qemu-img's output). */
export function describeDiff(refPath: string, oursPath: string, d: FileDiff, context = 8): string {
  const layout = new Qcow2Layout(refPath);
  const fr = openSync(refPath, 'r');
  const fo = openSync(oursPath, 'r');
  try {
    const ctxStart = Math.max(0, d.first - context);
    const ra = readAt(fr, 2 * context + 1, ctxStart);
    const oa = readAt(fo, 2 * context + 1, ctxStart);
    const at = d.first - ctxStart;
    const byte = (b: Buffer): string => (at < b.length ? (b[at] as number).toString(16).padStart(2, '0') : 'EOF');
    const lines = [
      `sizes: qemu ${d.sizeA} (${hex(d.sizeA)}), ours ${d.sizeB} (${hex(d.sizeB)})`,
      `first difference at ${hex(d.first)}: qemu ${byte(ra)}, ours ${byte(oa)}`,
      `  in qemu's layout: ${layout.describe(d.first)}`,
      `  qemu @${hex(ctxStart)}: ${hexBytes(ra)}`,
      `  ours @${hex(ctxStart)}: ${hexBytes(oa)}`,
      `differing bytes in the common length: ${d.differingBytes}; first runs:`,
      ...d.runs.map((r) => `  [${hex(r.start)}, ${hex(r.end)}) ${r.end - r.start} B: ${layout.describe(r.start)}`),
    ];
    return lines.join('\n');
  } finally {
    closeSync(fr);
    closeSync(fo);
  }
}

/** Allocated bytes of a file (st_blocks * 512). */
export function allocatedBytes(path: string): number {
  const fd = openSync(path, 'r');
  try {
    return fstatSync(fd).blocks * 512;
  } finally {
    closeSync(fd);
  }
}

/**
 * Compare two data files: same size and same content. Files up to `fullLimit` bytes are compared
 * completely; larger (sparse, freshly created) ones by their first and last MiB plus an allocation
 * bound (ours may not allocate more than qemu's or 1 MiB, whichever is larger), since reading
 * terabytes of holes is not an option. Returns '' when equal, else a report.
 */
export function compareDataFiles(refPath: string, oursPath: string, fullLimit = 256 * 1024 * 1024): string {
  const fr = openSync(refPath, 'r');
  const fo = openSync(oursPath, 'r');
  try {
    const sr = fstatSync(fr);
    const so = fstatSync(fo);
    if (sr.size !== so.size) return `data file size: qemu ${sr.size}, ours ${so.size}`;
    const size = sr.size;
    if (size <= fullLimit) {
      const d = diffFiles(refPath, oursPath);
      if (!d) return '';
      return `data file content differs at ${hex(d.first)} (${d.differingBytes} differing bytes)`;
    }
    for (const pos of [0, Math.max(0, size - CHUNK)]) {
      const len = Math.min(CHUNK, size - pos);
      const a = readAt(fr, len, pos);
      const b = readAt(fo, len, pos);
      if (!a.equals(b)) {
        let i = 0;
        while (a[i] === b[i]) i++;
        return `data file content differs at ${hex(pos + i)}`;
      }
    }
    const limit = Math.max(sr.blocks * 512, CHUNK);
    if (so.blocks * 512 > limit) {
      return `data file (${size} B) not sparse enough to be compared: ours allocates ${so.blocks * 512} B, qemu ${sr.blocks * 512} B`;
    }
    return '';
  } finally {
    closeSync(fr);
    closeSync(fo);
  }
}
