// One behaviour suite for both engines. Every scenario runs once per engine, in its own folder
// (root/<engine>/<n>) whose relative file names are the same for both, with the process working
// directory there (relative data file and backing names resolve as QEMU resolves them). Each run
// records what qemu-img itself sees afterwards (info without filename/actual-size, map, check,
// md5 of the qcow2 file and its data file) plus what the engine's own info/check return; a
// refusal records its code, message and the folder's files (which must be unchanged). The last
// block asserts the two engines' records are equal, scenario by scenario.
//
// getEngine() requires compiled siblings (dist); under vitest the classes are constructed
// directly (test/engines/qemuimg-engine.test.ts checks getEngine on the build).
//
// QEMU tools (qemu-img, qemu-io, qemu-nbd) are needed: without them the suite skips with the
// reason on the console, except under CI=true or REQUIRE_QEMU=1 where it fails.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Engine, EngineName } from '../../provider/engines/engine';
import { NativeEngine } from '../../provider/engines/native/engine';
import { sharedPool } from '../../provider/engines/native/pool';
import { QemuImgEngine } from '../../provider/engines/qemuimg/engine';
import { imageInfo } from '../helpers/info';
import type { CreateOptions } from '../../provider/model/options';
import { validateRebase } from '../../provider/rules/amend';
import {
  inDir, md5, must, observe, outcome, Outcome, scratchBase, snapshotDir, skipWithoutTools, startHolder, stopAllHolders, stopHolder, tool,
} from './helpers';

const SKIP = skipWithoutTools('engines/behaviour');

const ENGINES: Array<[EngineName, () => Engine]> = [
  ['native', () => new NativeEngine((target, call, progress) => sharedPool().run(target, call, progress))],
  ['qemu-img', () => new QemuImgEngine()],
];

const K = 1024n;
const M = 1024n * K;
const G = 1024n * M;

type Json = Record<string, unknown>;

interface Scenario {
  name: string;
  /** Prepare the folder (engine independent: qemu-img / qemu-io / plain files). */
  setup?: (dir: string) => void;
  /** The operation; its return value (if any) is recorded and compared between the engines. */
  run: (e: Engine, dir: string) => Promise<unknown>;
  /** A refusal: expected code (and message); the folder must be left exactly as it was. */
  fails?: { code: string; message?: string };
  /** Images to observe after a success (default img.qcow2); [] for none. */
  images?: string[];
  /** Extra assertions for each engine (and extra records). */
  after?: (dir: string, result: unknown, engine: EngineName) => Json | void;
  /**
   * A known difference between the engines (why, and which one is right): the agreement test
   * is expected to fail (it.fails), and starts passing, loudly, once the engines agree.
   */
  knownDifference?: string;
  /**
   * Why the two engines' qcow2 files may differ byte for byte although info, map and check
   * agree. Unset: the files must be identical (md5, size, image end offset).
   */
  bytesDiffer?: string;
  /**
   * Why the data clusters' host offsets may differ (map's offsets, check's fragmentation):
   * compared without them, the guest view and its allocation still must agree.
   */
  hostOffsetsDiffer?: string;
}

/** Why preallocated data clusters sit elsewhere in the file. */
const PREALLOC_AT_END = 'native resize preallocates the new data clusters in free clusters before its new tables; qemu-img after new refcount structures (falloc, full) or after each new L2 table (metadata)';

/** Why amend/resize results may differ byte for byte (not in what info, map and check see). */
const AT_END = 'native amend/resize place new metadata at the end of the file (all or nothing, one header write); qemu-img reuses freed clusters';

// ---------------------------------------------------------------------------------------------
// Setup helpers (engine independent)

const qimg = (dir: string, ...args: string[]) => must('qemu-img', args, dir);
const qio = (dir: string, image: string, ...cmds: string[]) => must('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), `./${image}`], dir);

/** A v3 (or given options) image with data, zero-plain and zero-allocated clusters. */
function imageWithData(dir: string, opts = '', size = '16M', image = 'img.qcow2'): void {
  qimg(dir, 'create', '-q', '-f', 'qcow2', ...(opts ? ['-o', opts] : []), image, size);
  qio(dir, image, 'write -P 0x11 0 64k', 'write -P 0x22 2M 64k', 'write -z 2M 64k', ...(opts.includes('compat=0.10') ? [] : ['write -z 1M 64k']), 'write -P 0x33 5M 128k');
}

function overlayWithZeros(dir: string): void {
  qimg(dir, 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'img.qcow2');
  qio(dir, 'img.qcow2', 'write -z 0 64k', 'write -P 0x44 64k 64k', 'write -P 0x55 1M 64k', 'write -z 1M 64k');
}

function rawFile(file: string, size: number, seed = 7): void {
  const b = Buffer.alloc(size);
  let x = seed;
  for (let i = 0; i < size; i += 512) {
    x = (x * 1103515245 + 12345) >>> 0;
    b.writeUInt32BE(x, i);
  }
  fs.writeFileSync(file, b);
}

/** Refcount of cluster `ci` in a fresh 64 KiB / 16-bit image (refblock at cluster 2). */
function setRefcount(file: string, ci: number, v: number, grow?: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    fs.writeSync(fd, b, 0, 2, 0x20000 + ci * 2);
    if (grow !== undefined) fs.ftruncateSync(fd, grow);
  } finally {
    fs.closeSync(fd);
  }
}

const create = (o: CreateOptions) => (e: Engine) => e.create('img.qcow2', o);

// ---------------------------------------------------------------------------------------------
// Scenarios

const RAW_REBASE_MESSAGE = validateRebase({ dataFileRaw: true } as never, 'base.qcow2')!.message;

const HOSTILE: Array<[string, string]> = [
  ['a,b.qcow2', 'd,at,a=1,.raw'],
  ['sp ace.qcow2', 'sp ace.raw'],
  ['new\nline.qcow2', 'nl\n.raw'],
  ['-dash.qcow2', '-dash.raw'],
  ['json:{"driver":"null-co"}', 'json:{"driver":"raw","file":{"driver":"null-co"}}'],
  ['nbd:localhost:10809', 'nbd:localhost:10810'],
  ['ssh:root@localhost:img', 'ssh:root@localhost:data'],
  ['file:img.qcow2', 'file:data.raw'],
  ['quote"back\\slash \u00e9.qcow2', "it's\\ \u00fc.raw"],
];

const scenarios: Scenario[] = [
  // --- create: a representative set of configurations
  { name: 'create default 1 GiB', run: create({ size: G }) },
  { name: 'create compat 0.10', run: create({ size: 64n * M, compat: '0.10' }) },
  { name: 'create 512 B clusters, 1-bit refcounts', run: create({ size: 8n * M, clusterSize: 512, refcountBits: 1 }) },
  { name: 'create 2 MiB clusters, 64-bit refcounts', run: create({ size: 4n * G, clusterSize: 2 << 20, refcountBits: 64 }) },
  { name: 'create lazy refcounts', run: create({ size: 64n * M, lazyRefcounts: true }) },
  { name: 'create extended L2', run: create({ size: 64n * M, clusterSize: 128 << 10, extendedL2: true }) },
  { name: 'create zstd', run: create({ size: 64n * M, compressionType: 'zstd' }) },
  { name: 'create preallocation metadata', run: create({ size: 16n * M, preallocation: 'metadata' }) },
  { name: 'create preallocation falloc', run: create({ size: 4n * M, preallocation: 'falloc' }) },
  { name: 'create preallocation full', run: create({ size: 4n * M, preallocation: 'full' }) },
  { name: 'create data file', run: create({ size: 8n * M, dataFile: 'img.data' }) },
  { name: 'create data_file_raw', run: create({ size: 8n * M, dataFile: 'img.data', dataFileRaw: true }) },
  { name: 'create data_file_raw, full preallocation', run: create({ size: 4n * M, dataFile: 'img.data', dataFileRaw: true, preallocation: 'full' }) },
  { name: 'create data file in another folder', setup: (d) => fs.mkdirSync(path.join(d, 'sub')), run: create({ size: 8n * M, dataFile: 'sub/img.data', dataFileRaw: true }) },
  {
    name: 'create data file in a folder with a hostile name', setup: (d) => fs.mkdirSync(path.join(d, '-we,ird dir\n')),
    run: create({ size: 8n * M, dataFile: '-we,ird dir\n/img,data', dataFileRaw: true }),
  },
  { name: 'create backing qcow2, size from backing', run: create({ backingFile: 'base.qcow2', backingFormat: 'qcow2' }) },
  { name: 'create backing raw, size given', run: create({ backingFile: 'base.raw', backingFormat: 'raw', size: 16n * M }) },
  { name: 'create data file and backing', run: create({ dataFile: 'img.data', backingFile: 'base.qcow2', backingFormat: 'qcow2' }) },
  { name: 'create extended L2, backing, metadata preallocation', run: create({ backingFile: 'base.qcow2', backingFormat: 'qcow2', extendedL2: true, preallocation: 'metadata' }) },
  { name: 'create size 0', run: create({ size: 0n }) },
  { name: 'create size rounded up to 512', run: create({ size: 1000n, dataFile: 'img.data', dataFileRaw: true }) },

  // --- amend
  { bytesDiffer: AT_END, name: 'amend compat 0.10 expands zero clusters', setup: (d) => imageWithData(d), run: (e) => e.amend('img.qcow2', { compat: '0.10' }) },
  { bytesDiffer: AT_END, name: 'amend compat 0.10 on a backed image keeps zero clusters', setup: overlayWithZeros, run: (e) => e.amend('img.qcow2', { compat: '0.10' }) },
  { name: 'amend compat 1.1', setup: (d) => imageWithData(d, 'compat=0.10'), run: (e) => e.amend('img.qcow2', { compat: '1.1' }) },
  { name: 'amend lazy refcounts on', setup: (d) => imageWithData(d), run: (e) => e.amend('img.qcow2', { lazyRefcounts: true }) },
  { name: 'amend lazy refcounts off', setup: (d) => imageWithData(d, 'lazy_refcounts=on'), run: (e) => e.amend('img.qcow2', { lazyRefcounts: false }) },
  { bytesDiffer: AT_END, name: 'amend refcount bits 4', setup: (d) => imageWithData(d), run: (e) => e.amend('img.qcow2', { refcountBits: 4 }) },
  { name: 'amend size grow', setup: (d) => imageWithData(d), run: (e) => e.amend('img.qcow2', { size: 40n * M }) },
  { bytesDiffer: AT_END, name: 'amend size shrink', setup: (d) => imageWithData(d), run: (e) => e.amend('img.qcow2', { size: 4n * M }) },
  {
    name: 'amend data file rename', setup: (d) => { imageWithData(d, 'data_file=img.data'); fs.copyFileSync(path.join(d, 'img.data'), path.join(d, 'moved.data')); },
    run: (e) => e.amend('img.qcow2', { dataFile: 'moved.data' }),
  },
  { name: 'amend data_file_raw off', setup: (d) => imageWithData(d, 'data_file=img.data,data_file_raw=on'), run: (e) => e.amend('img.qcow2', { dataFileRaw: false }) },
  { bytesDiffer: AT_END, name: 'amend size grow, data_file_raw', setup: (d) => imageWithData(d, 'data_file=img.data,data_file_raw=on'), run: (e) => e.amend('img.qcow2', { size: 24n * M }) },
  {
    bytesDiffer: AT_END,
    name: 'amend several options at once', setup: (d) => imageWithData(d, 'compat=0.10'),
    run: (e) => e.amend('img.qcow2', { compat: '1.1', lazyRefcounts: true, refcountBits: 8, size: 32n * M }),
  },
  {
    bytesDiffer: AT_END,
    name: 'amend compat 0.10, zstd without compressed clusters', setup: (d) => imageWithData(d, 'compression_type=zstd'),
    run: (e) => e.amend('img.qcow2', { compat: '0.10' }),
  },
  { name: 'amend nothing to change', setup: (d) => imageWithData(d), run: (e) => e.amend('img.qcow2', { compat: '1.1', lazyRefcounts: false }) },

  // --- resize
  { name: 'resize grow', setup: (d) => imageWithData(d), run: (e) => e.resize('img.qcow2', 48n * M) },
  { bytesDiffer: AT_END, name: 'resize shrink with allowShrink', setup: (d) => imageWithData(d), run: (e) => e.resize('img.qcow2', 3n * M, { allowShrink: true }) },
  { bytesDiffer: AT_END, name: 'resize grow, data_file_raw', setup: (d) => imageWithData(d, 'data_file=img.data,data_file_raw=on'), run: (e) => e.resize('img.qcow2', 20n * M) },
  { name: 'resize grow, backed image', setup: overlayWithZeros, run: (e) => e.resize('img.qcow2', 12n * M) },
  {
    name: 'resize grow over a longer backing file zeroes the new area',
    setup: (d) => qimg(d, 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'img.qcow2', '2M'),
    run: (e) => e.resize('img.qcow2', 6n * M),
    // Both engines write zero clusters over the new area, so the backing file's data at 3 MiB
    // does not appear in the guest (metadata placement differs: native never updates in place).
    bytesDiffer: AT_END,
    after: (dir) => {
      const read = tool('qemu-io', ['-f', 'qcow2', '-c', 'read -P 0 3M 64k', './img.qcow2'], dir);
      expect(read.stdout, read.stdout + read.stderr).not.toMatch(/Pattern verification failed/);
      return undefined;
    },
  },
  {
    name: 'resize shrink without allowShrink is refused', setup: (d) => imageWithData(d), run: (e) => e.resize('img.qcow2', 8n * M),
    fails: { code: 'REFUSED', message: 'Use the --shrink option to perform a shrink operation.' },
  },
  {
    name: 'resize to a size not a multiple of 512 is refused', setup: (d) => imageWithData(d), run: (e) => e.resize('img.qcow2', 32n * M + 1n),
    fails: { code: 'REFUSED', message: 'The new size must be a multiple of 512' },
  },
  // resize --preallocation: every new guest cluster gets a data cluster (map: data at an offset)
  { bytesDiffer: AT_END, hostOffsetsDiffer: PREALLOC_AT_END, name: 'resize grow, preallocation metadata', setup: (d) => imageWithData(d), run: (e) => e.resize('img.qcow2', 24n * M, { preallocation: 'metadata' }) },
  { bytesDiffer: AT_END, hostOffsetsDiffer: PREALLOC_AT_END, name: 'resize grow, preallocation falloc', setup: (d) => imageWithData(d), run: (e) => e.resize('img.qcow2', 20n * M, { preallocation: 'falloc' }) },
  { bytesDiffer: AT_END, hostOffsetsDiffer: PREALLOC_AT_END, name: 'resize grow, preallocation full, 512 B clusters', setup: (d) => imageWithData(d, 'cluster_size=512'), run: (e) => e.resize('img.qcow2', 17n * M, { preallocation: 'full' }) },
  { bytesDiffer: AT_END, hostOffsetsDiffer: PREALLOC_AT_END, name: 'resize grow, preallocation full, data file', setup: (d) => imageWithData(d, 'data_file=img.data'), run: (e) => e.resize('img.qcow2', 20n * M, { preallocation: 'full' }) },
  {
    // The native engine copies the old end's cluster from the backing file (test/cli/commands/
    // resize-amend-parity.test.ts compares it with qemu-img); the qemu-img engine's stand-in
    // backing file would put zeros there, so it refuses, and the image is left as it was.
    name: 'resize grow with preallocation from inside a cluster of a backed image',
    setup: (d) => qimg(d, 'create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'img.qcow2', '31k'),
    run: async (e) => {
      try {
        await e.resize('img.qcow2', 96n * 1024n, { preallocation: 'metadata' });
        return 'resized';
      } catch (err) {
        return (err as { code?: string }).code;
      }
    },
    knownDifference: 'the qemu-img engine refuses (REFUSED): its stand-in backing file cannot give the cluster\'s start',
  },
  {
    name: 'resize shrink with preallocation is refused', setup: (d) => imageWithData(d), run: (e) => e.resize('img.qcow2', 8n * M, { allowShrink: true, preallocation: 'metadata' }),
    fails: { code: 'REFUSED', message: 'Preallocation can only be used for growing images' },
  },

  // --- rebase
  { name: 'rebase plain image onto a backing file', setup: (d) => imageWithData(d, '', '8M'), run: (e) => e.rebase('img.qcow2', 'base.qcow2', 'qcow2') },
  { name: 'rebase removes the backing file', setup: overlayWithZeros, run: (e) => e.rebase('img.qcow2', '') },
  {
    name: 'rebase refused on a data-file-raw image', setup: (d) => imageWithData(d, 'data_file=img.data,data_file_raw=on'),
    run: (e) => e.rebase('img.qcow2', 'base.qcow2', 'qcow2'), fails: { code: 'REFUSED', message: RAW_REBASE_MESSAGE },
  },

  // --- import (qemu-img convert for the qemu-img engine) and map
  {
    name: 'import a raw source', setup: (d) => rawFile(path.join(d, 'src.raw'), 1 << 20),
    run: (e) => e.import('img.qcow2', {}, { path: 'src.raw', format: 'raw' }),
  },
  {
    name: 'import a qcow2 chain into a data-file-raw image', setup: (d) => { imageWithData(d, '', '8M', 'base.qcow2'); overlayWithZeros(d); },
    run: (e) => e.import('new.qcow2', { dataFile: 'new.raw', dataFileRaw: true }, { path: 'img.qcow2' }), images: ['new.qcow2'],
    bytesDiffer: 'qemu-img convert and the native import allocate the preallocated metadata in a different order',
  },
  {
    name: 'import refuses a backing file for the new image', setup: (d) => rawFile(path.join(d, 'src.raw'), 1 << 20),
    run: (e) => e.import('img.qcow2', { backingFile: 'src.raw', backingFormat: 'raw' }, { path: 'src.raw', format: 'raw' }),
    fails: { code: 'REFUSED' },
  },
  {
    name: 'import several sources one after another (raw, then a chain), every cluster written (sparse 0)',
    setup: (d) => { rawFile(path.join(d, 'src.raw'), (1 << 20) + 1000); imageWithData(d, '', '8M', 'base.qcow2'); overlayWithZeros(d); },
    run: (e) => e.import('new.qcow2', {}, { path: 'src.raw', format: 'raw' }, { moreSources: [{ path: 'img.qcow2' }], sparse: 0 }), images: ['new.qcow2'],
  },
  {
    name: 'import with a minimum sparse size above the cluster size (sparse 8k, 1 KiB clusters)',
    setup: (d) => { imageWithData(d, '', '8M', 'base.qcow2'); overlayWithZeros(d); qio(d, 'img.qcow2', 'write -P 0x66 3M 512', 'write -P 0x66 3076k 512'); },
    run: (e) => e.import('new.qcow2', { clusterSize: 1024 }, { path: 'img.qcow2' }, { sparse: 8192 }), images: ['new.qcow2'],
  },
  {
    name: 'convert -n of several sources, zeros written as data (sparse 0)',
    setup: (d) => { rawFile(path.join(d, 'src.raw'), 1 << 20); imageWithData(d, '', '8M', 'base.qcow2'); qimg(d, 'create', '-q', '-f', 'qcow2', 'img.qcow2', '16M'); },
    run: (e) => e.convertInto('img.qcow2', { path: 'src.raw', format: 'raw' }, { moreSources: [{ path: 'base.qcow2' }], sparse: 0 }),
  },
  {
    name: 'import of several sources refuses a backing file for the new image', setup: (d) => rawFile(path.join(d, 'src.raw'), 1 << 20),
    run: (e) => e.import('img.qcow2', { backingFile: 'src.raw', backingFormat: 'raw' }, { path: 'src.raw', format: 'raw' }, { moreSources: [{ path: 'src.raw', format: 'raw' }], overBacking: true }),
    fails: { code: 'REFUSED', message: 'Having a backing file for the target makes no sense when concatenating multiple input images' },
  },
  {
    name: 'map of an overlay through its chain', setup: (d) => { imageWithData(d, '', '8M', 'base.qcow2'); overlayWithZeros(d); },
    run: async (e) => (await e.map('img.qcow2', { forceShare: true })).map(({ filename: _f, ...entry }) => entry),
  },

  // --- refusals (the seed's data-file-raw rules among them)
  {
    name: 'create raw without data file is refused', run: create({ size: 64n * M, dataFileRaw: true }),
    fails: { code: 'INVALID_OPTION', message: 'data-file-raw requires data-file' },
  },
  {
    name: 'create raw with backing file is refused', run: create({ size: 8n * M, dataFile: 'img.data', dataFileRaw: true, backingFile: 'base.qcow2', backingFormat: 'qcow2' }),
    fails: { code: 'INVALID_OPTION', message: 'Backing file and data-file-raw cannot be used at the same time' },
  },
  { name: 'create extended L2 with raw is refused', run: create({ size: 8n * M, dataFile: 'img.data', dataFileRaw: true, extendedL2: true }), fails: { code: 'INVALID_OPTION' } },
  { name: 'create compat 0.10 with lazy refcounts is refused', run: create({ size: 8n * M, compat: '0.10', lazyRefcounts: true }), fails: { code: 'INVALID_OPTION' } },
  { name: 'create with a missing backing file fails', run: create({ backingFile: 'nope.qcow2', backingFormat: 'qcow2' }), fails: { code: 'NOT_FOUND' } },
  { name: 'create without backing format fails', run: create({ backingFile: 'base.qcow2' }), fails: { code: 'INVALID_OPTION' } },
  {
    name: 'create with a data file name too long for cluster 0 fails',
    run: create({ size: 1n * M, clusterSize: 512, dataFile: `${'x'.repeat(200)}/../${'y'.repeat(200)}/../img.data` }),
    fails: { code: 'INVALID_OPTION' },
  },
  {
    name: 'amend enabling data_file_raw is refused', setup: (d) => imageWithData(d, 'data_file=img.data'),
    run: (e) => e.amend('img.qcow2', { dataFileRaw: true }), fails: { code: 'REFUSED' },
  },
  {
    name: 'amend of the backing file is refused', setup: overlayWithZeros,
    run: (e) => e.amend('img.qcow2', { backingFile: 'base.raw', backingFormat: 'raw' }),
    fails: { code: 'REFUSED', message: "Cannot amend the backing file\nYou can use 'qemu-img rebase' instead." },
  },
  {
    name: 'amend lazy refcounts on compat 0.10 is refused', setup: (d) => imageWithData(d, 'compat=0.10'),
    run: (e) => e.amend('img.qcow2', { lazyRefcounts: true }), fails: { code: 'REFUSED' },
  },
  {
    name: 'amend downgrade with a data file is refused', setup: (d) => imageWithData(d, 'data_file=img.data'),
    run: (e) => e.amend('img.qcow2', { compat: '0.10' }), fails: { code: 'REFUSED', message: 'Cannot downgrade an image with a data file' },
  },
  {
    name: 'amend downgrade of zstd with compressed clusters is refused',
    setup: (d) => { imageWithData(d, 'compression_type=zstd'); qio(d, 'img.qcow2', 'write -c -P 0x66 8M 64k'); },
    run: (e) => e.amend('img.qcow2', { compat: '0.10' }), fails: { code: 'REFUSED' },
  },
  {
    name: 'amend downgrade with refcount bits 8 is refused (nothing applied)', setup: (d) => imageWithData(d),
    run: (e) => e.amend('img.qcow2', { compat: '0.10', refcountBits: 8, lazyRefcounts: true }), fails: { code: 'REFUSED' },
  },
  {
    name: 'amend data file on an image without one is refused', setup: (d) => imageWithData(d),
    run: (e) => e.amend('img.qcow2', { dataFile: 'x.data' }), fails: { code: 'REFUSED', message: 'data-file can only be set for images that use an external data file' },
  },
  {
    name: 'amend of a corrupt image is refused', setup: (d) => { imageWithData(d); const fd = fs.openSync(path.join(d, 'img.qcow2'), 'r+'); fs.writeSync(fd, Buffer.from([2]), 0, 1, 79); fs.closeSync(fd); },
    run: (e) => e.amend('img.qcow2', { lazyRefcounts: true }), fails: { code: 'REFUSED' },
  },
  { name: 'amend of a missing image fails', run: (e) => e.amend('nope.qcow2', { lazyRefcounts: true }), fails: { code: 'NOT_FOUND', message: "Could not open 'nope.qcow2': No such file or directory" } },
  { name: 'amend of a raw file fails', setup: (d) => rawFile(path.join(d, 'img.qcow2'), 1 << 20), run: (e) => e.amend('img.qcow2', { lazyRefcounts: true }), fails: { code: 'INVALID_IMAGE', message: 'Image is not in qcow2 format' } },
  { name: 'info of a missing image fails', run: (e) => e.info('nope.qcow2'), fails: { code: 'NOT_FOUND', message: "Could not open 'nope.qcow2': No such file or directory" } },

  // --- no data loss
  {
    name: 'create over an existing image is refused', setup: (d) => imageWithData(d),
    run: create({ size: 8n * M }), fails: { code: 'EXISTS' },
  },
  {
    name: 'create with an existing data file is refused (md5 unchanged)', setup: (d) => rawFile(path.join(d, 'disk.raw'), 4 << 20),
    run: create({ size: 4n * M, dataFile: 'disk.raw', dataFileRaw: true }), fails: { code: 'EXISTS' },
  },
  {
    name: 'create adopting a missing data file fails', run: create({ dataFile: 'disk.raw', adoptDataFile: true }),
    fails: { code: 'NOT_FOUND' },
  },
  {
    name: 'create adopting a too small data file is refused', setup: (d) => rawFile(path.join(d, 'disk.raw'), 1 << 20),
    run: create({ size: 4n * M, dataFile: 'disk.raw', adoptDataFile: true, dataFileRaw: true }), fails: { code: 'INVALID_OPTION' },
  },
  {
    name: 'create adopting a raw disk leaves it unchanged',
    setup: (d) => rawFile(path.join(d, 'disk.raw'), 6 << 20),
    run: async (e, dir) => {
      const before = md5(path.join(dir, 'disk.raw'));
      const mtime = fs.statSync(path.join(dir, 'disk.raw')).mtimeMs;
      await e.create('img.qcow2', { dataFile: 'disk.raw', adoptDataFile: true, dataFileRaw: true });
      expect(md5(path.join(dir, 'disk.raw'))).toBe(before);
      expect(fs.statSync(path.join(dir, 'disk.raw')).mtimeMs).toBe(mtime);
    },
    after: (dir) => {
      const cmp = tool('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', 'disk.raw', 'img.qcow2'], dir);
      expect(cmp.status, cmp.stderr).toBe(0);
      expect(cmp.stdout).toContain('Images are identical');
      return { compare: cmp.stdout };
    },
  },
  {
    name: 'create adopting with full preallocation leaves it unchanged', setup: (d) => rawFile(path.join(d, 'disk.raw'), 2 << 20),
    run: create({ dataFile: 'disk.raw', adoptDataFile: true, dataFileRaw: true, preallocation: 'full' }),
    after: (dir) => {
      expect(tool('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', 'disk.raw', 'img.qcow2'], dir).status).toBe(0);
    },
  },
  {
    name: 'create adopting a data file in another folder', setup: (d) => { fs.mkdirSync(path.join(d, 'disks')); rawFile(path.join(d, 'disks/disk.raw'), 2 << 20); },
    run: create({ dataFile: 'disks/disk.raw', adoptDataFile: true }),
  },

  // --- check: the same verdicts and messages
  {
    name: 'check reports a leak', setup: (d) => { qimg(d, 'create', '-q', '-f', 'qcow2', 'img.qcow2', '1M'); setRefcount(path.join(d, 'img.qcow2'), 4, 1, 5 * 65536); },
    run: (e) => e.check('img.qcow2'), images: [],
  },
  {
    name: 'check reports a corruption', setup: (d) => { qimg(d, 'create', '-q', '-f', 'qcow2', 'img.qcow2', '1M'); setRefcount(path.join(d, 'img.qcow2'), 4, 1, 5 * 65536); setRefcount(path.join(d, 'img.qcow2'), 3, 0); },
    run: (e) => e.check('img.qcow2'), images: [],
  },
  { name: 'check of an image whose data file is missing fails', setup: (d) => { imageWithData(d, 'data_file=img.data'); fs.unlinkSync(path.join(d, 'img.data')); }, run: (e) => e.check('img.qcow2'), fails: { code: 'NOT_FOUND' } },

  // --- remove
  {
    name: 'remove keeps the data file and the backing file', setup: (d) => { qimg(d, 'create', '-q', '-f', 'qcow2', '-o', 'data_file=img.data', '-b', 'base.qcow2', '-F', 'qcow2', 'img.qcow2'); },
    run: (e) => e.remove('img.qcow2'), images: [],
    after: (dir) => ({ files: Object.keys(snapshotDir(dir)).sort() }),
  },
  {
    name: 'remove with dataFile removes the data file, never the backing file', setup: (d) => { qimg(d, 'create', '-q', '-f', 'qcow2', '-o', 'data_file=img.data', '-b', 'base.qcow2', '-F', 'qcow2', 'img.qcow2'); },
    run: (e) => e.remove('img.qcow2', { dataFile: true }), images: [],
    after: (dir) => {
      const files = Object.keys(snapshotDir(dir)).sort();
      expect(files).toEqual(['base.qcow2', 'base.raw']);
      return { files };
    },
  },

  // --- stat (what the resource asks before create, read and delete)
  {
    name: 'stat: an image, a folder, nothing', setup: (d) => { qimg(d, 'create', '-q', '-f', 'qcow2', 'img.qcow2', '1M'); fs.mkdirSync(path.join(d, 'sub')); },
    run: async (e, dir) => {
      const r = { image: await e.stat('img.qcow2'), folder: (await e.stat('sub'))?.kind, missing: await e.stat('none.qcow2'),
        throughAFile: await e.stat('img.qcow2/x') };
      const st = fs.statSync(path.join(dir, 'img.qcow2'), { bigint: true });
      expect(r.image).toEqual({ kind: 'file', size: Number(st.size), id: `${st.dev}:${st.ino}` });
      expect(r).toMatchObject({ folder: 'directory', missing: undefined, throughAFile: undefined });
      // The identity differs between the engines' scratch copies: compare the rest.
      return { ...r, image: { kind: r.image?.kind, size: r.image?.size } };
    },
  },

  // --- locks: a real QEMU holder
  {
    name: 'lock conflicts with a running qemu-nbd', setup: (d) => imageWithData(d),
    run: async (e, dir) => {
      const before = md5(path.join(dir, 'img.qcow2'));
      const pid = startHolder(dir, 'img.qcow2');
      try {
        const r = {
          amend: await outcome(() => e.amend('img.qcow2', { lazyRefcounts: true })),
          refusedAndLocked: await outcome(() => e.amend('img.qcow2', { dataFileRaw: true })),
          resize: await outcome(() => e.resize('img.qcow2', 32n * M)),
          rebase: await outcome(() => e.rebase('img.qcow2', 'base.qcow2', 'qcow2')),
          remove: await outcome(() => e.remove('img.qcow2')),
          info: await outcome(() => e.info('img.qcow2')),
          infoShared: withoutActual(await e.info('img.qcow2', { forceShare: true })),
        };
        for (const k of ['amend', 'refusedAndLocked', 'resize', 'rebase', 'remove'] as const) {
          expect(r[k], k).toMatchObject({ ok: false, code: 'LOCKED', message: 'Failed to get "write" lock\nIs another process using the image [img.qcow2]?' });
        }
        expect(r.info).toMatchObject({ ok: false, code: 'LOCKED', message: 'Failed to get shared "write" lock\nIs another process using the image [img.qcow2]?' });
        // Both engines' check takes QEMU's read lock: LOCKED while a VM writes, unless forceShare.
        const check = await outcome(() => e.check('img.qcow2'));
        expect(check).toMatchObject({ ok: false, code: 'LOCKED', message: 'Failed to get shared "write" lock\nIs another process using the image [img.qcow2]?' });
        expect(await outcome(() => e.check('img.qcow2', { forceShare: true }))).toEqual({ ok: true });
        expect(md5(path.join(dir, 'img.qcow2'))).toBe(before);
        return r;
      } finally {
        stopHolder(pid);
      }
    },
  },

  // --- hostile names: create and amend with hostile image and data file names
  ...HOSTILE.map(([image, data], i): Scenario => {
    const next = HOSTILE[(i + 1) % HOSTILE.length]![1];
    return {
      name: `hostile names ${JSON.stringify(image)} / ${JSON.stringify(data)}`,
      bytesDiffer: AT_END, // resize
      images: [],
      run: async (e, dir) => {
        await e.create(image, { size: 4n * M, dataFile: data, dataFileRaw: true });
        expect(imageInfo(path.join(dir, image))['format-specific']!.data['data-file']).toBe(data);
        expect(fs.statSync(path.join(dir, data)).size).toBe(4 << 20);
        fs.renameSync(path.join(dir, data), path.join(dir, next));
        await e.amend(image, { dataFile: next, lazyRefcounts: true });
        expect(imageInfo(path.join(dir, image))['format-specific']!.data['data-file']).toBe(next);
        await e.resize(image, 6n * M); // opens the data file by its hostile name
        expect(fs.statSync(path.join(dir, next)).size).toBe(6 << 20);
        await e.amend(image, { dataFileRaw: false });
        await e.rebase(image, '', undefined);
        const info = withoutActual(await e.info(image));
        const check = await e.check(image);
        expect(check).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
        // Absolute data file names too (what the provider stores).
        await e.amend(image, { dataFile: path.join(dir, next) });
        expect(imageInfo(path.join(dir, image))['format-specific']!.data['data-file']).toBe(path.join(dir, next));
        await e.amend(image, { dataFile: next });
        const files = Object.keys(snapshotDir(dir)).sort();
        expect(files).toEqual([...new Set(['base.qcow2', 'base.raw', image, next])].sort());
        const { imageEndOffset: _end, ...verdict } = check;
        return { info, check: verdict, dataFile: imageInfo(path.join(dir, image))['format-specific']!.data['data-file'] };
      },
    };
  }),
  {
    name: 'hostile backing names are stored as given',
    setup: (d) => imageWithData(d, '', '8M'),
    run: async (e, dir) => {
      const out: string[] = [];
      for (const b of ['json:{"driver":"null-co"}', 'nbd:localhost:1', 'a,b c\nd', '-base.qcow2', 'file:base.qcow2']) {
        await e.rebase('img.qcow2', b, 'raw');
        const j = imageInfo(path.join(dir, 'img.qcow2'));
        expect(j['backing-filename']).toBe(b);
        expect(j['backing-filename-format']).toBe('raw');
        out.push(md5(path.join(dir, 'img.qcow2')));
      }
      return out;
    },
    images: [],
  },
  // --- persistent bitmaps (qemu-img bitmap; the native engine writes qemu-img's bytes)
  {
    name: 'bitmap add, then guest writes, then dump',
    setup: (d) => imageWithData(d, '', '8M'),
    run: async (e) => {
      await e.bitmap('img.qcow2', 'b', [{ op: 'add', granularity: 4096 }]);
      await e.bitmap('img.qcow2', 'off', [{ op: 'add' }, { op: 'disable' }]);
      return null;
    },
    after: (dir) => {
      qio(dir, 'img.qcow2', 'write -P 1 8k 4k', 'write -P 2 3M 64k');
      return { extents: true };
    },
  },
  {
    name: 'bitmap dump lists the dirty extents',
    setup: (d) => { imageWithData(d, '', '8M'); qimg(d, 'bitmap', '--add', '-g', '4k', 'img.qcow2', 'b'); qio(d, 'img.qcow2', 'write -P 1 8k 4k', 'write -P 2 3M 64k'); },
    run: async (e) => e.dumpBitmap('img.qcow2', 'b'),
  },
  {
    name: 'bitmap merge from another image, clear, remove',
    setup: (d) => {
      imageWithData(d, '', '8M');
      imageWithData(d, '', '8M', 'src.qcow2');
      qimg(d, 'bitmap', '--add', '-g', '4k', 'src.qcow2', 's');
      qio(d, 'src.qcow2', 'write -P 1 1M 4k');
      qimg(d, 'bitmap', '--add', 'img.qcow2', 't');
      qimg(d, 'bitmap', '--add', 'img.qcow2', 'gone');
    },
    run: async (e) => {
      await e.bitmap('img.qcow2', 't', [{ op: 'merge', source: 's', external: true }], { sourceFile: 'src.qcow2', sourceFormat: 'qcow2' });
      const merged = await e.dumpBitmap('img.qcow2', 't');
      await e.bitmap('img.qcow2', 'gone', [{ op: 'clear' }, { op: 'remove' }]);
      return merged;
    },
    images: ['img.qcow2', 'src.qcow2'],
  },
  {
    name: 'bitmap add of an existing name is refused with qemu-img\'s words',
    setup: (d) => { imageWithData(d, '', '8M'); qimg(d, 'bitmap', '--add', 'img.qcow2', 'b'); },
    run: (e) => e.bitmap('img.qcow2', 'b', [{ op: 'add' }]),
    fails: { code: 'REFUSED', message: 'Operation add on bitmap b failed: Bitmap already exists: b' },
  },
  {
    name: 'bitmap add on a compat 0.10 image is refused',
    setup: (d) => imageWithData(d, 'compat=0.10', '8M'),
    run: (e) => e.bitmap('img.qcow2', 'b', [{ op: 'add' }]),
    fails: { code: 'REFUSED', message: "Operation add on bitmap b failed: Can't make bitmap 'b' persistent in 'img.qcow2': Cannot store dirty bitmaps in qcow2 v2 files" },
  },
  {
    name: 'bitmap clear of an inconsistent bitmap is refused; remove then add recovers it',
    setup: (d) => { imageWithData(d, '', '8M'); qimg(d, 'bitmap', '--add', 'img.qcow2', 'b'); tool('qemu-io', ['-f', 'qcow2', '-c', 'sigraise 9', './img.qcow2'], d); },
    run: async (e) => {
      const refused = await outcome(() => e.bitmap('img.qcow2', 'b', [{ op: 'clear' }]));
      const facts = (await e.info('img.qcow2')).detail!.bitmaps;
      await e.bitmap('img.qcow2', 'b', [{ op: 'remove' }, { op: 'add' }]);
      return { refused, facts };
    },
  },
  { bytesDiffer: AT_END, name: 'resize grow with bitmaps resizes them', setup: (d) => { imageWithData(d, '', '8M'); qimg(d, 'bitmap', '--add', '-g', '4k', 'img.qcow2', 'b'); qio(d, 'img.qcow2', 'write -P 1 8128k 64k'); }, run: (e) => e.resize('img.qcow2', 12n * M) },
  {
    name: 'convert --bitmaps copies them',
    setup: (d) => { imageWithData(d, '', '8M', 'src.qcow2'); qimg(d, 'bitmap', '--add', '-g', '4k', 'src.qcow2', 'b'); qio(d, 'src.qcow2', 'write -P 1 1M 64k'); },
    run: (e) => e.import('img.qcow2', {}, { path: 'src.qcow2', format: 'qcow2' }, { bitmaps: true }),
  },

];

function withoutActual(i: object): Json {
  const { actualSize: _a, ...rest } = i as Json;
  return rest;
}

const jsonable = (v: unknown): unknown => JSON.parse(JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? `${x}n` : x)));

// ---------------------------------------------------------------------------------------------

const records = new Map<EngineName, Map<string, { record: Json; bytes: Json }>>([['native', new Map()], ['qemu-img', new Map()]]);
let root = '';
let fixtures = '';

/** observe()'s record without host offsets (map) and fragmentation (check): see Scenario.hostOffsetsDiffer. */
function withoutHostOffsets(o: Record<string, unknown>): void {
  for (const e of o.map as Array<Record<string, unknown>>) delete e.offset;
  const check = o.check as Record<string, unknown>;
  delete check['fragmented-clusters'];
}

describe.skipIf(SKIP)('engine behaviour', () => {
  beforeAll(() => {
    root = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-engines-'));
    fixtures = path.join(root, 'fixtures');
    fs.mkdirSync(fixtures);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', 'base.qcow2', '8M'], fixtures);
    must('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x77 0 256k', '-c', 'write -P 0x78 3M 64k', './base.qcow2'], fixtures);
    rawFile(path.join(fixtures, 'base.raw'), 1 << 20, 99);
  });

  afterAll(() => {
    stopAllHolders();
    if (root) fs.rmSync(root, { recursive: true, force: true });
  });

  afterEach(stopAllHolders);

  describe.each(ENGINES)('%s engine', (engineName, make) => {
    const engine = make();
    it.each(scenarios.map((s, i) => [s.name, i] as const))('%s', async (_name, i) => {
      const s = scenarios[i]!;
      const dir = path.join(root, engineName, String(i).padStart(2, '0'));
      fs.mkdirSync(dir, { recursive: true });
      for (const f of ['base.qcow2', 'base.raw']) fs.copyFileSync(path.join(fixtures, f), path.join(dir, f));
      s.setup?.(dir);
      const before = snapshotDir(dir);
      let result: unknown;
      const out: Outcome = await inDir(dir, () => outcome(async () => { result = await s.run(engine, dir); }));
      const record: Json = { outcome: out };
      const bytes: Json = {};
      if (s.fails) {
        expect(out, JSON.stringify(out)).toMatchObject({ ok: false, code: s.fails.code, ...(s.fails.message !== undefined ? { message: s.fails.message } : {}) });
        expect(snapshotDir(dir), 'a refused or failed operation changes nothing and leaves nothing behind').toEqual(before);
      } else {
        expect(out, JSON.stringify(out)).toEqual({ ok: true });
        if (result !== undefined) record.result = jsonable(result);
        for (const img of s.images ?? ['img.qcow2']) {
          const o = observe(dir, img);
          expect(o.checkStatus, JSON.stringify(o.check)).toBe(0);
          const own = await inDir(dir, async () => ({
            info: withoutActual(await engine.info(img, { forceShare: true })),
            check: await engine.check(img),
          }));
          expect(own.check).toMatchObject({ corruptions: 0, leaks: 0, checkErrors: 0 });
          if (s.hostOffsetsDiffer) withoutHostOffsets(o);
          const { md5: sum, size, check: { 'image-end-offset': end, ...check }, ...seen } = o as Json & { check: Json };
          const { imageEndOffset, ...ownCheck } = own.check;
          if (s.hostOffsetsDiffer) delete (ownCheck as { fragmentedClusters?: number }).fragmentedClusters;
          record[img] = { ...seen, check, engine: jsonable({ info: own.info, check: ownCheck }) };
          bytes[img] = { md5: sum, size, end, imageEndOffset };
        }
        const extra = s.after?.(dir, result, engineName);
        if (extra) record.after = extra;
        // No temporary files left beside the image.
        expect(Object.keys(snapshotDir(dir)).filter((f) => f.includes('.qcow2-tmp-'))).toEqual([]);
      }
      records.get(engineName)!.set(s.name, { record, bytes });
    });
  });

  const agree = (name: string) => {
    const a = records.get('native')!.get(name);
    const b = records.get('qemu-img')!.get(name);
    expect(a, 'native engine result recorded').toBeDefined();
    expect(b, 'qemu-img engine result recorded').toBeDefined();
    expect(b!.record).toEqual(a!.record);
    if (!scenarios.find((s) => s.name === name)!.bytesDiffer) expect(b!.bytes, 'byte-identical qcow2 files').toEqual(a!.bytes);
  };

  // A scenario may record a known difference: it is expected to disagree (it.fails), and starts
  // failing loudly once the engines agree.
  const known = scenarios.filter((x) => x.knownDifference);
  if (known.length) {
    describe('known differences (expected to disagree)', () => {
      for (const s of known) it.fails(`${s.name}: ${s.knownDifference}`, () => agree(s.name));
    });
  }

  describe('the two engines agree', () => {
    it.each(scenarios.filter((s) => !s.knownDifference).map((s) => [s.name] as const))('%s', (name) => {
      agree(name);
    });
  });
});
