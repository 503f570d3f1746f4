// create without a disk: planCreate + writePlan onto a MemoryBlockFile for a spread of options,
// then Image.open / info / check on the bytes, the geometry of the result, the write order, and
// (with qemu-img) `qemu-img check` clean, the same `info`, and the same bytes as `qemu-img create`.

import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { BlockFile, MemoryBlockFile } from '../../../provider/qcow2/io/blockfile';
import { checkImage } from '../../../provider/qcow2/ops/check';
import * as C from '../../../provider/qcow2/spec/constants';
import { writePlan, type CreatePlan } from '../../../provider/qcow2/ops/create';
import { Qcow2Error } from '../../../provider/model/errors';
import { Geometry } from '../../../provider/qcow2/spec/geometry';
import { Image } from '../../../provider/qcow2/meta/image';
import { infoOf } from '../../../provider/qcow2/ops/info';
import { infoJsonOf } from '../../../provider/model/qemu-json';
import { imageInfo } from '../../helpers/info';
import type { CreateOptions } from '../../../provider/model/options';
import { planFor } from '../../helpers/images';
import { runQemuImg, skipWithoutQemu } from '../../helpers/qemu';

const SKIP_QEMU = skipWithoutQemu('qcow2/create-memory');
const tmp = mkdtempSync(join(tmpdir(), 'qcow2-create-mem-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const BASE_RAW = join(tmp, 'base.raw');
writeFileSync(BASE_RAW, Buffer.alloc(0));
truncateSync(BASE_RAW, 1 << 20);

interface Case {
  name: string;
  options: CreateOptions;
  /** qemu-img create -o text for the same image (names are substituted per case dir). */
  qemu: string;
  sizeArg: string;
  /** Expected qcow2 file size, where the notes give it. */
  fileSize?: number;
}

const G = 1n << 30n;
const CASES: Case[] = [
  { name: 'default 1G', options: { size: G }, qemu: '', sizeArg: '1G', fileSize: 196624 },
  { name: 'size 0', options: { size: 0n }, qemu: '', sizeArg: '0', fileSize: 3 * 65536 },
  { name: 'odd size rounds to 512', options: { size: 1000n }, qemu: '', sizeArg: '1000' },
  { name: 'compat 0.10', options: { size: G, compat: '0.10' }, qemu: 'compat=0.10', sizeArg: '1G' },
  { name: '512 byte clusters', options: { size: 64n << 20n, clusterSize: 512 }, qemu: 'cluster_size=512', sizeArg: '64M' },
  { name: '2M clusters', options: { size: 1n << 40n, clusterSize: 2 << 20 }, qemu: 'cluster_size=2M', sizeArg: '1T' },
  { name: 'refcount 1 bit', options: { size: G, refcountBits: 1 }, qemu: 'refcount_bits=1', sizeArg: '1G' },
  { name: 'refcount 64 bit 512 clusters metadata', options: { size: 1n << 20n, refcountBits: 64, clusterSize: 512, preallocation: 'metadata' },
    qemu: 'refcount_bits=64,cluster_size=512,preallocation=metadata', sizeArg: '1M' },
  { name: 'lazy refcounts zstd', options: { size: G, lazyRefcounts: true, compressionType: 'zstd' },
    qemu: 'lazy_refcounts=on,compression_type=zstd', sizeArg: '1G' },
  { name: 'extended l2', options: { size: G, extendedL2: true }, qemu: 'extended_l2=on', sizeArg: '1G' },
  { name: 'metadata preallocation', options: { size: 8n << 20n, preallocation: 'metadata' }, qemu: 'preallocation=metadata', sizeArg: '8M' },
  { name: 'falloc 4k clusters', options: { size: 1n << 20n, preallocation: 'falloc', clusterSize: 4096 },
    qemu: 'preallocation=falloc,cluster_size=4096', sizeArg: '1M' },
  { name: 'full 512 clusters', options: { size: 256n << 10n, preallocation: 'full', clusterSize: 512 },
    qemu: 'preallocation=full,cluster_size=512', sizeArg: '256K' },
  { name: 'backing file', options: { size: 1n << 20n, backingFile: BASE_RAW, backingFormat: 'raw' },
    qemu: `backing_file=${BASE_RAW},backing_fmt=raw`, sizeArg: '1M' },
  { name: 'data file', options: { size: G, dataFile: '@data' }, qemu: 'data_file=@data', sizeArg: '1G' },
  { name: 'data file raw 1G', options: { size: G, dataFile: '@data', dataFileRaw: true }, qemu: 'data_file=@data,data_file_raw=on',
    sizeArg: '1G', fileSize: 393216 },
  { name: 'data file raw 512 clusters spills past first refblock', options: { size: 16n << 20n, dataFile: '@data', dataFileRaw: true, clusterSize: 512, refcountBits: 64 },
    qemu: 'data_file=@data,data_file_raw=on,cluster_size=512,refcount_bits=64', sizeArg: '16M' },
];

let caseNo = 0;
/** Per-case dir; '@data' in names becomes an absolute data file path inside it. */
function materialise(c: Case): { dir: string; options: CreateOptions; qemuOpts: string; dataFile?: string } {
  const dir = join(tmp, String(++caseNo));
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir);
  const data = join(dir, 'data.raw');
  const options = { ...c.options };
  if (options.dataFile === '@data') options.dataFile = data;
  return { dir, options, qemuOpts: c.qemu.replace('@data', data), ...(options.dataFile ? { dataFile: data } : {}) };
}

function inMemory(options: CreateOptions): { plan: CreatePlan; file: MemoryBlockFile } {
  const plan = planFor(options);
  const file = new MemoryBlockFile();
  writePlan(plan, file);
  return { plan, file };
}

describe.each(CASES)('$name', (c) => {
  const m = materialise(c);
  const { plan, file } = inMemory(m.options);
  const bytes = file.bytes();

  it('writes_exactly_the_planned_file_size', () => {
    expect(file.size()).toBe(plan.fileSize);
    if (c.fileSize !== undefined) expect(plan.fileSize).toBe(c.fileSize);
  });

  it('opens_with_the_requested_fields', () => {
    const o = plan.options;
    const img = Image.open(new MemoryBlockFile(bytes));
    const h = img.header;
    const g = new Geometry(o.clusterBits, o.refcountOrder, o.extendedL2);
    expect(img.geometry).toEqual(g);
    expect(h.version).toBe(o.compat === '0.10' ? 2 : 3);
    expect(h.size).toBe(((c.options.size! + 511n) / 512n) * 512n);
    expect(h.l1Size).toBe(g.l1EntriesFor(h.size));
    if (h.l1Size === 0) expect(h.l1TableOffset).toBe(0n);
    else expect(g.isClusterAligned(h.l1TableOffset)).toBe(true);
    expect(g.isClusterAligned(h.refcountTableOffset)).toBe(true);
    expect(h.refcountTableClusters).toBeGreaterThanOrEqual(1);
    expect(h.refcountOrder).toBe(o.refcountOrder);
    expect(h.nbSnapshots).toBe(0);
    expect(img.hasDataFile).toBe(o.dataFile !== undefined);
    expect(img.dataFileRaw).toBe(o.dataFileRaw);
    expect(img.extendedL2).toBe(o.extendedL2);
    expect(h.compressionType).toBe(o.compressionType === 'zstd' ? 1 : 0);
    expect((h.incompatibleFeatures & C.QCOW2_INCOMPAT_COMPRESSION) !== 0n).toBe(o.compressionType === 'zstd');
    expect(h.compatibleFeatures).toBe(o.lazyRefcounts ? C.QCOW2_COMPAT_LAZY_REFCOUNTS : 0n);
    expect(img.dirty || img.corrupt).toBe(false);
    expect(h.backingFile).toBe(o.backingFile);
    expect(h.backingFormat).toBe(o.backingFormat);
    expect(h.dataFile).toBe(o.dataFile);
    if (h.version === 3) expect(h.headerLength).toBe(112);
  });

  it('has_qemus_geometry_on_disk', () => {
    const img = Image.open(new MemoryBlockFile(bytes));
    const { clusterSize: cs } = img.geometry;
    // Header in cluster 0, refcount table at cluster 1 with its first block at cluster 2 (unless moved).
    expect(bytes.readUInt32BE(0)).toBe(C.QCOW_MAGIC);
    const reftable = img.readReftable();
    expect(reftable.length).toBe((img.header.refcountTableClusters * cs) / 8);
    if (img.header.refcountTableOffset === BigInt(cs)) expect(reftable[0]).toBe(BigInt(2 * cs));
    if (plan.options.preallocation === 'off' && img.header.l1Size > 0) {
      expect(img.header.l1TableOffset).toBe(BigInt(3 * cs));
      expect(bytes.length).toBe(3 * cs + img.header.l1Size * 8);
    }
    const l1 = img.readL1();
    const preallocated = plan.options.preallocation !== 'off';
    expect(l1.every((e) => (preallocated ? e !== 0n && (e & C.QCOW_OFLAG_COPIED) !== 0n : e === 0n))).toBe(true);
  });

  it('reports_info_like_qemu_img', () => {
    const info = infoJsonOf(infoOf(new MemoryBlockFile(bytes), 'mem.qcow2'), 'mem.qcow2');
    const o = plan.options;
    expect(info['virtual-size']).toBe(Number(((c.options.size! + 511n) / 512n) * 512n));
    expect(info['cluster-size']).toBe(o.clusterSize);
    expect(info.format).toBe('qcow2');
    expect(info['dirty-flag']).toBe(false);
    const d = info['format-specific']!.data;
    expect(d.compat).toBe(o.compat);
    expect(d['refcount-bits']).toBe(o.refcountBits);
    expect(d['compression-type']).toBe(o.compressionType);
    if (o.compat === '1.1') {
      expect(d['lazy-refcounts']).toBe(o.lazyRefcounts);
      expect(d['extended-l2']).toBe(o.extendedL2);
      expect(d.corrupt).toBe(false);
    }
    expect(d['data-file']).toBe(o.dataFile);
    expect(d['data-file-raw']).toBe(o.dataFile !== undefined ? o.dataFileRaw : undefined);
  });

  it('checks_clean_with_our_check', () => {
    const r = checkImage(new MemoryBlockFile(bytes));
    expect(r.messages).toEqual([]);
    expect([r.corruptions, r.leaks, r.checkErrors]).toEqual([0, 0, 0]);
  });

  it('is_deterministic', () => {
    expect(inMemory(m.options).file.bytes().equals(bytes)).toBe(true);
  });

  it('writes_refblocks_then_l2_then_l1_then_reftable_and_the_header_last', () => {
    const kinds: string[] = [];
    const recorder = new (class extends MemoryBlockFile {
      override write(offset: number, data: Uint8Array): void {
        const role = plan.roles.get(Math.floor(offset / plan.geometry.clusterSize));
        kinds.push(role ? role.kind : 'data');
        super.write(offset, data);
      }
    })();
    writePlan(plan, recorder);
    expect(recorder.bytes().equals(bytes)).toBe(true);
    expect(kinds[kinds.length - 1]).toBe('header');
    const rank: Record<string, number> = { data: 0, refblock: 1, l2: 2, l1: 3, reftable: 4, header: 5 };
    for (let i = 1; i < kinds.length; i++) expect(rank[kinds[i]!]!).toBeGreaterThanOrEqual(rank[kinds[i - 1]!]!);
  });

  describe.skipIf(SKIP_QEMU)('against qemu-img', () => {
    const ours = join(m.dir, 'ours.qcow2');
    writeFileSync(ours, bytes);
    if (m.dataFile !== undefined) {
      // The data file the plan describes (sparse), so check can open it.
      writeFileSync(m.dataFile, Buffer.alloc(0));
      truncateSync(m.dataFile, plan.dataFileSize ?? 0);
    }

    it('qemu_img_check_is_clean', () => {
      const r = runQemuImg(['check', '--output=json', '-f', 'qcow2', ours]);
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      const j = JSON.parse(r.stdout);
      expect(j['check-errors']).toBe(0);
      expect(j.corruptions ?? 0).toBe(0);
      expect(j.leaks ?? 0).toBe(0);
    });

    it('qemu_img_info_matches_ours', () => {
      const r = runQemuImg(['info', '--output=json', '-f', 'qcow2', ours]);
      expect(r.status).toBe(0);
      expect(imageInfo(ours)).toEqual(JSON.parse(r.stdout));
    });

    it('qemu_img_create_writes_the_same_bytes', () => {
      const theirs = join(m.dir, 'theirs.qcow2');
      if (m.dataFile !== undefined) rmSync(m.dataFile, { force: true }); // qemu-img create makes it
      const r = runQemuImg(['create', '-q', '-f', 'qcow2', ...(m.qemuOpts ? ['-o', m.qemuOpts] : []), theirs, c.sizeArg]);
      expect(r.stderr).toBe('');
      const t = readFileSync(theirs);
      expect(t.length).toBe(bytes.length);
      const firstDiff = t.findIndex((v, i) => v !== bytes[i]);
      expect(firstDiff).toBe(-1);
    });
  });
});

describe('create refusals in memory', () => {
  it('long_backing_name_that_does_not_fit_cluster_0_is_refused_like_qemu_img_create', () => {
    const name = '/' + 'a'.repeat(400);
    let err: unknown;
    try { planFor({ size: 1n << 20n, clusterSize: 512, backingFile: name, backingFormat: 'raw' }); } catch (e) { err = e; }
    expect(Qcow2Error.isInstance(err)).toBe(true);
    // qemu-img create -u -o cluster_size=512 -b /aaa... -F raw img 1M:
    expect((err as Qcow2Error).message).toBe(`Could not assign backing file '${name}' with format 'raw': No space left on device`);
  });

  it.skipIf(SKIP_QEMU)('qemu_img_create_refuses_the_same_long_backing_name', () => {
    const name = '/' + 'a'.repeat(400);
    const file = join(tmp, 'long-backing.qcow2');
    const r = runQemuImg(['create', '-q', '-f', 'qcow2', '-u', '-o', 'cluster_size=512', '-b', name, '-F', 'raw', file, '1M']);
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe(`qemu-img: ${file}: Could not assign backing file '${name}' with format 'raw': No space left on device`);
    expect(existsSync(file)).toBe(false);
  });

  it('longest_backing_name_that_fits_a_512_byte_cluster_opens', () => {
    // 112 header + 16 backing-format extension + 8 end marker = 136: 376 bytes remain.
    const name = '/' + 'b'.repeat(375);
    const { file } = inMemory({ size: 1n << 20n, clusterSize: 512, backingFile: name, backingFormat: 'raw' });
    expect(Image.open(file as BlockFile).header.backingFile).toBe(name);
  });
});
