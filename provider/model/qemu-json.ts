// `qemu-img info --output=json` as a boundary format of the image facts, both ways: facts from
// qemu-img's own JSON (the qemu-img engine reads it), and the same JSON from facts (the CLI
// prints it, byte for byte as qemu-img 7.2 does). Pure: no I/O.

import type { ImageFacts, SnapshotFacts } from './facts';

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
  const d = j['format-specific'].data;
  const exactVirtual = text !== undefined ? /^ {4}"virtual-size": (\d+),?$/m.exec(text)?.[1] : undefined;
  const facts: ImageFacts = {
    virtualSize: BigInt(exactVirtual ?? j['virtual-size']),
    actualSize: BigInt(j['actual-size'] ?? 0),
    clusterSize: j['cluster-size'],
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
      bitmaps: (d.bitmaps ?? []).map((b) => ({ name: b.name, granularity: b.granularity, flags: [...b.flags] })),
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
  const j: ImageInfoJson = {
    'virtual-size': Number(f.virtualSize),
    filename,
    'cluster-size': f.clusterSize,
    format: 'qcow2',
    'actual-size': Number(f.actualSize),
    'format-specific': { type: 'qcow2', data },
    'dirty-flag': f.dirty,
  };
  if (f.backingFile !== undefined) {
    j['backing-filename'] = f.backingFile;
    j['full-backing-filename'] = f.detail?.fullBackingFile ?? f.backingFile;
    if (f.backingFormat !== undefined) j['backing-filename-format'] = f.backingFormat;
  }
  const snaps = f.detail?.snapshots ?? [];
  if (snaps.length > 0) {
    j.snapshots = snaps.map((s) => {
      const o: SnapshotJson = {
        'vm-clock-nsec': Number(s.vmClockNsec % NS),
        name: s.name,
        'date-sec': s.dateSec,
        'date-nsec': s.dateNsec,
        'vm-clock-sec': Number(s.vmClockNsec / NS),
        id: s.id,
        'vm-state-size': Number(s.vmStateSize),
      };
      if (s.icount !== undefined) o.icount = Number(s.icount);
      return o;
    });
  }
  return j;
}
