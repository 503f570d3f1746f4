// `info`: what `qemu-img info` reports, as the same JSON object (--output=json) and the same
// human text. Reads only cluster 0 and what it points at (snapshot table, bitmap directory);
// never the L1/L2 tables and never the data file, so its cost does not grow with the image.

import { BlockFile, NodeBlockFile } from '../io/blockfile';
import { BitmapInfo, decodeBitmapDirectory } from '../spec/bitmaps';
import { Image } from '../meta/image';
import { formatSize } from '../../model/size';

export interface ImageInfoJson {
  'virtual-size': number;
  filename: string;
  'cluster-size': number;
  format: 'qcow2';
  'actual-size': number;
  'format-specific': { type: 'qcow2'; data: Qcow2SpecificJson };
  'dirty-flag': boolean;
  'backing-filename'?: string;
  'full-backing-filename'?: string;
  'backing-filename-format'?: string;
  snapshots?: SnapshotJson[];
}

export interface Qcow2SpecificJson {
  compat: '0.10' | '1.1';
  'compression-type': 'zlib' | 'zstd';
  'lazy-refcounts'?: boolean;
  bitmaps?: BitmapInfo[];
  'refcount-bits': number;
  'data-file'?: string;
  'data-file-raw'?: boolean;
  corrupt?: boolean;
  'extended-l2'?: boolean;
}

export interface SnapshotJson {
  icount?: number;
  'vm-clock-nsec': number;
  name: string;
  'date-sec': number;
  'date-nsec': number;
  'vm-clock-sec': number;
  id: string;
  'vm-state-size': number;
}

/** The facts `info` reports, typed (sizes exact as bigint) for callers other than the CLI. */
export function describe(img: Image, fileName: string, allocated: number): ImageInfoJson {
  const h = img.header;
  const data: Qcow2SpecificJson = {
    compat: h.version === 2 ? '0.10' : '1.1',
    'compression-type': h.compressionType === 1 ? 'zstd' : 'zlib',
    'refcount-bits': img.geometry.refcountBits,
  };
  if (h.version >= 3) data['lazy-refcounts'] = (h.compatibleFeatures & 1n) !== 0n;
  if (h.bitmaps) {
    const dir = img.read(h.bitmaps.bitmapDirectoryOffset, Number(h.bitmaps.bitmapDirectorySize));
    data.bitmaps = decodeBitmapDirectory(dir, h.bitmaps.nbBitmaps, Number(h.bitmaps.bitmapDirectoryOffset), img.geometry.clusterSize, h.size)
      .map(({ name, granularity, flags }) => ({ flags, name, granularity }));
  }
  if (h.dataFile !== undefined) data['data-file'] = h.dataFile;
  if (img.hasDataFile) data['data-file-raw'] = img.dataFileRaw;
  if (h.version >= 3) {
    data.corrupt = img.corrupt;
    data['extended-l2'] = img.extendedL2;
  }
  const info: ImageInfoJson = {
    'virtual-size': toJsonNumber(h.size),
    filename: fileName,
    'cluster-size': img.geometry.clusterSize,
    format: 'qcow2',
    'actual-size': allocated,
    'format-specific': { type: 'qcow2', data },
    'dirty-flag': img.dirty,
  };
  if (h.backingFile !== undefined) {
    info['backing-filename'] = h.backingFile;
    info['full-backing-filename'] = fullBackingFilename(fileName, h.backingFile);
    if (h.backingFormat !== undefined) info['backing-filename-format'] = h.backingFormat;
  }
  exactSizes.set(info, h.size);
  const snaps = img.readSnapshots();
  if (snaps.length > 0) {
    info.snapshots = snaps.map((s) => {
      const j: SnapshotJson = {
        'vm-clock-nsec': Number(s.vmClockNsec % 1_000_000_000n),
        name: s.name,
        'date-sec': s.dateSec,
        'date-nsec': s.dateNsec,
        'vm-clock-sec': Number(s.vmClockNsec / 1_000_000_000n),
        id: s.id,
        'vm-state-size': toJsonNumber(s.vmStateSize),
      };
      if (s.icount !== undefined && s.icount !== 0xffffffffffffffffn) j.icount = toJsonNumber(s.icount);
      return j;
    });
  }
  return info;
}

/** QEMU's path_combine: a relative backing name is relative to the image's folder. */
export function fullBackingFilename(imageName: string, backing: string): string {
  if (backing.startsWith('/') || /^[a-zA-Z0-9+.-]+:/.test(backing) && !backing.startsWith('./')) return backing;
  const slash = imageName.lastIndexOf('/');
  return slash < 0 ? backing : imageName.slice(0, slash + 1) + backing;
}

/** qemu-img prints 64-bit values as JSON integers; beyond 2^53 a JS number cannot hold them. */
function toJsonNumber(v: bigint): number {
  return Number(v);
}

/** The exact virtual size of each described image, for the JSON text (the object holds numbers). */
const exactSizes = new WeakMap<ImageInfoJson, bigint>();

/** `qemu-img info --output=json FILE`, parsed. Never opens the data file. */
export function imageInfo(fileName: string): ImageInfoJson {
  const file = NodeBlockFile.open(fileName, false);
  try {
    return infoOf(file, fileName);
  } finally {
    file.close();
  }
}

export function infoOf(file: BlockFile, fileName: string): ImageInfoJson {
  const img = Image.open(file, fileName);
  return describe(img, fileName, file.allocatedSize());
}

/** JSON text as qemu-img prints it (4-space indent); the virtual size is printed exactly. */
export function infoJsonText(info: ImageInfoJson): string {
  const exact = exactSizes.get(info);
  const text = JSON.stringify(info, null, 4);
  if (exact === undefined || exact <= BigInt(Number.MAX_SAFE_INTEGER)) return text;
  return text.replace(/^( {4}"virtual-size": )\d+(\.\d+)?(e\+\d+)?/m, `$1${exact}`);
}

/** The human form of `qemu-img info FILE`. */
export function infoHumanText(info: ImageInfoJson): string {
  const lines: string[] = [];
  lines.push(`image: ${info.filename}`);
  lines.push('file format: qcow2');
  const exact = exactSizes.get(info) ?? BigInt(info['virtual-size']);
  lines.push(`virtual size: ${formatSize(exact)} (${exact} bytes)`);
  lines.push(`disk size: ${formatSize(info['actual-size'])}`);
  lines.push(`cluster_size: ${info['cluster-size']}`);
  if (info['dirty-flag']) lines.push('cleanly shut down: no');
  if (info['backing-filename'] !== undefined) {
    let l = `backing file: ${info['backing-filename']}`;
    if (info['full-backing-filename'] !== info['backing-filename']) l += ` (actual path: ${info['full-backing-filename']})`;
    lines.push(l);
    if (info['backing-filename-format'] !== undefined) lines.push(`backing file format: ${info['backing-filename-format']}`);
  }
  if (info.snapshots) {
    lines.push('Snapshot list:');
    lines.push(snapshotRow('ID', 'TAG', 'VM SIZE', 'DATE', 'VM CLOCK', 'ICOUNT'));
    for (const s of info.snapshots) {
      const date = new Date(s['date-sec'] * 1000);
      const pad = (n: number, w = 2) => String(n).padStart(w, '0');
      const dateStr = `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
      const secs = s['vm-clock-sec'];
      const clock = `${pad(Math.floor(secs / 3600))}:${pad(Math.floor(secs / 60) % 60)}:${pad(secs % 60)}.${pad(Math.floor(s['vm-clock-nsec'] / 1e6), 3)}`;
      lines.push(snapshotRow(s.id, s.name, formatSize(s['vm-state-size']), dateStr, clock, s.icount === undefined ? '' : String(s.icount)));
    }
  }
  lines.push('Format specific information:');
  const d = info['format-specific'].data;
  const ind = '    ';
  lines.push(`${ind}compat: ${d.compat}`);
  lines.push(`${ind}compression type: ${d['compression-type']}`);
  if (d['lazy-refcounts'] !== undefined) lines.push(`${ind}lazy refcounts: ${d['lazy-refcounts']}`);
  if (d.bitmaps) {
    lines.push(`${ind}bitmaps:`);
    d.bitmaps.forEach((b, i) => {
      lines.push(`${ind}${ind}[${i}]:`);
      lines.push(`${ind}${ind}${ind}flags:`);
      b.flags.forEach((f, k) => lines.push(`${ind}${ind}${ind}${ind}[${k}]: ${f}`));
      lines.push(`${ind}${ind}${ind}name: ${b.name}`);
      lines.push(`${ind}${ind}${ind}granularity: ${b.granularity}`);
    });
  }
  lines.push(`${ind}refcount bits: ${d['refcount-bits']}`);
  if (d['data-file'] !== undefined) lines.push(`${ind}data file: ${d['data-file']}`);
  if (d['data-file-raw'] !== undefined) lines.push(`${ind}data file raw: ${d['data-file-raw']}`);
  if (d.corrupt !== undefined) lines.push(`${ind}corrupt: ${d.corrupt}`);
  if (d['extended-l2'] !== undefined) lines.push(`${ind}extended l2: ${d['extended-l2']}`);
  return lines.join('\n') + '\n';
}

/** QEMU's snapshot list columns: "%-9s %-17s %8s %19s %15s %10s" style widths. */
function snapshotRow(id: string, tag: string, vmSize: string, date: string, clock: string, icount: string): string {
  return `${id.padEnd(10)}${tag.padEnd(18)}${vmSize.padStart(7)} ${date.padStart(19)} ${clock.padStart(12)} ${icount.padStart(10)}`;
}

