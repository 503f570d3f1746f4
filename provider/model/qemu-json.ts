// `qemu-img info --output=json` as a boundary format of the image facts, both ways: facts from
// qemu-img's own JSON (the qemu-img engine reads it), and the same JSON from facts (the CLI
// prints it, byte for byte as qemu-img 7.2 does). Pure: no I/O.

import { rawImageFacts, type ImageFacts, type SnapshotFacts } from './facts';

export interface ImageInfoJson {
  'virtual-size': number;
  filename: string;
  'cluster-size'?: number;
  format: 'qcow2' | 'raw';
  'actual-size': number;
  'format-specific'?: { type: 'qcow2'; data: Qcow2SpecificJson };
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
  bitmaps?: Array<{ flags: string[]; name: string; granularity: number }>;
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

const NS = 1_000_000_000n;

/**
 * The facts in qemu-img's JSON. `text` is the JSON as printed: 64-bit values are read from it
 * exactly, since JSON.parse rounds integers above 2^53 (qemu allows sizes up to 2^63 - 2^30).
 */
export function factsFromInfoJson(j: ImageInfoJson, text?: string): ImageFacts {
  const exactVirtual = text !== undefined ? /^ {4}"virtual-size": (\d+),?$/m.exec(text)?.[1] : undefined;
  if (j.format === 'raw') return rawImageFacts(BigInt(exactVirtual ?? j['virtual-size']), BigInt(j['actual-size'] ?? 0));
  const d = j['format-specific']!.data;
  const facts: ImageFacts = {
    virtualSize: BigInt(exactVirtual ?? j['virtual-size']),
    actualSize: BigInt(j['actual-size'] ?? 0),
    clusterSize: j['cluster-size'] ?? 0,
    compat: d.compat,
    refcountBits: d['refcount-bits'],
    lazyRefcounts: d['lazy-refcounts'] ?? false,
    extendedL2: d['extended-l2'] ?? false,
    compressionType: d['compression-type'],
    hasDataFile: d['data-file-raw'] !== undefined,
    dataFileRaw: d['data-file-raw'] ?? false,
    dirty: j['dirty-flag'],
    corrupt: d.corrupt ?? false,
    snapshots: j.snapshots?.length ?? 0,
    bitmaps: (d.bitmaps ?? []).map((b) => b.name),
    detail: {
      snapshots: (j.snapshots ?? []).map((s) => {
        const f: SnapshotFacts = {
          id: s.id, name: s.name, vmStateSize: BigInt(s['vm-state-size']), dateSec: s['date-sec'], dateNsec: s['date-nsec'],
          vmClockNsec: BigInt(s['vm-clock-sec']) * NS + BigInt(s['vm-clock-nsec']),
        };
        if (s.icount !== undefined) f.icount = BigInt(s.icount);
        return f;
      }),
      bitmaps: (d.bitmaps ?? []).map((b) => ({ name: b.name, granularity: b.granularity, flags: [...b.flags], inconsistent: b.flags.includes('in-use') })),
    },
  };
  if (d['data-file'] !== undefined) facts.dataFile = d['data-file'];
  if (j['backing-filename'] !== undefined) facts.backingFile = j['backing-filename'];
  if (j['backing-filename-format'] !== undefined) facts.backingFormat = j['backing-filename-format'];
  if (j['full-backing-filename'] !== undefined) facts.detail!.fullBackingFile = j['full-backing-filename'];
  return facts;
}

/** qemu-img's JSON object for facts read from the image `filename` (numbers as JSON numbers). */
export function infoJsonOf(f: ImageFacts, filename: string): ImageInfoJson {
  const v3 = f.compat === '1.1';
  // Key order is qemu-img's.
  const data = { compat: f.compat, 'compression-type': f.compressionType } as Qcow2SpecificJson;
  if (v3) data['lazy-refcounts'] = f.lazyRefcounts;
  const bitmaps = f.detail?.bitmaps ?? f.bitmaps.map((name) => ({ name, granularity: 0, flags: [] as string[] }));
  if (bitmaps.length > 0) data.bitmaps = bitmaps.map((b) => ({ flags: [...b.flags], name: b.name, granularity: b.granularity }));
  data['refcount-bits'] = f.refcountBits;
  if (f.dataFile !== undefined) data['data-file'] = f.dataFile;
  if (f.hasDataFile) data['data-file-raw'] = f.dataFileRaw;
  if (v3) {
    data.corrupt = f.corrupt;
    data['extended-l2'] = f.extendedL2;
  }
  // qemu-img 7.2 prints a QDict, whose keys come out in its hash order, not QAPI's field order.
  const snaps = f.detail?.snapshots ?? [];
  const j = {} as ImageInfoJson;
  if (f.backingFile !== undefined && f.backingFormat !== undefined) j['backing-filename-format'] = f.backingFormat;
  if (snaps.length > 0) {
    j.snapshots = snaps.map((s) => {
      const o = {} as SnapshotJson;
      if (s.icount !== undefined) o.icount = Number(s.icount);
      o['vm-clock-nsec'] = Number(s.vmClockNsec % NS);
      o.name = s.name;
      o['date-sec'] = s.dateSec;
      o['date-nsec'] = s.dateNsec;
      o['vm-clock-sec'] = Number(s.vmClockNsec / NS);
      o.id = s.id;
      o['vm-state-size'] = Number(s.vmStateSize);
      return o;
    });
  }
  j['virtual-size'] = Number(f.virtualSize);
  j.filename = filename;
  if (f.format !== 'raw') j['cluster-size'] = f.clusterSize;
  j.format = f.format ?? 'qcow2';
  j['actual-size'] = Number(f.actualSize);
  if (f.format !== 'raw') j['format-specific'] = { type: 'qcow2', data };
  if (f.backingFile !== undefined) {
    j['full-backing-filename'] = f.detail?.fullBackingFile ?? f.backingFile;
    j['backing-filename'] = f.backingFile;
  }
  j['dirty-flag'] = f.dirty;
  return j;
}
