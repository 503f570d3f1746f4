// The Image resource next to a running QEMU: qemu-storage-daemon holds the image like a VM
// (QEMU's locks, an NBD or FUSE export for guest writes, QMP on a unix socket). With qmpSocket a
// grow and bitmap changes go through that QEMU; every other change is refused at preview, naming
// the daemon, and the image is left as it was; a daemon that dies mid-update fails the update
// with the socket named, and its bitmaps are then reported inconsistent with the reset offered.
// Offline, the bitmaps input is carried out by the native engine and survives the other changes.

import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type * as Impl from '../../provider/resource/impl';
import type { ImageOutputs } from '../../provider/resource/impl';
import { skipWithoutQemu } from '../helpers/qemu';
import { dirtyExtents, imageCheck, imageInfo, Qsd, skipWithoutQsd, startQsd } from '../helpers/qsd';

const MiB = 1024 * 1024;
const KiB = 1024;
// The build (npm test builds first): the engines load their compiled modules at run time.
const DIST = path.resolve(__dirname, '../../dist/provider');
const impl = require(path.join(DIST, 'resource/impl.js')) as typeof Impl;
const { getEngine } = require(path.join(DIST, 'engines/index.js')) as typeof import('../../provider/engines');
const md5 = (f: string) => crypto.createHash('md5').update(fs.readFileSync(f)).digest('hex');

async function failure(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error('expected a failure');
}

/** The outputs' bitmaps, as plain objects. */
const bitmapsOf = (o: ImageOutputs) => o.bitmaps.map((b) => (typeof b === 'string' ? { name: b } : b));

describe.skipIf(skipWithoutQsd('resource-live'))('Image with a running QEMU (qemu-storage-daemon)', () => {
  let dir: string;
  let image: string;
  let qsd: Qsd | undefined;
  const engine = getEngine('native');

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-live-'));
    image = path.join(dir, 'vm.qcow2');
  });

  afterEach(async () => {
    await qsd?.kill();
    qsd = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const created = async (extra: Partial<Impl.ImageInputs> = {}) => (await impl.create({ path: image, size: 4 * MiB, ...extra })).outs;

  it('grows_live_through_qmp_and_the_guest_sees_the_new_size', async () => {
    if (skipWithoutQsd('resource-live grow', { fuse: true })) return;
    const outs = await created();
    qsd = await startQsd({ image, export: 'fuse' });
    const holder = `process ${qsd.pid} (qemu-storage-daemon)`;

    // Without qmpSocket: refused at preview, with the way forward.
    const refused = await failure(impl.diff(image, outs, { path: image, size: 8 * MiB }));
    expect(refused.message).toBe(
      `size: size cannot change while ${holder} holds the image for writing (a running VM): changing it under QEMU would corrupt the image. ` +
      "Stop the VM first, or set qmpSocket to that QEMU's QMP socket to change it live",
    );

    const news = { path: image, size: 8 * MiB, qmpSocket: qsd.qmpSocket };
    expect((await impl.diff(image, outs, news)).changes).toBe(true);
    const up = (await impl.update(image, outs, news)).outs;
    expect(up.virtualSize).toBe(8 * MiB);
    let seen = qsd.exportSize();
    for (let i = 0; i < 300 && seen !== 8 * MiB; i++) {
      await new Promise((r) => setTimeout(r, 20)); // the FUSE export caches attributes briefly
      seen = qsd.exportSize();
    }
    expect(seen).toBe(8 * MiB);
    expect((await impl.diff(image, up, news)).changes).toBe(false);
    qsd.write(7 * MiB, 64 * KiB, 0x5a); // the guest writes into the new space
    expect(await qsd.stop()).toEqual({ code: 0, signal: null });
    expect(imageInfo(image)['virtual-size']).toBe(8 * MiB);
    expect(imageCheck(image).status).toBe(0);
  });

  it('adds_a_bitmap_live_that_records_guest_writes_read_after_the_daemon_stops', async () => {
    const outs = await created();
    qsd = await startQsd({ image });
    const news = { path: image, size: 4 * MiB, qmpSocket: qsd.qmpSocket, bitmaps: [{ name: 'backup', granularity: 64 * KiB }, { name: 'paused', enabled: false }] };
    const up = (await impl.update(image, outs, news)).outs;
    // QEMU lists the newest first, and stores them in that order when it closes the image.
    expect(bitmapsOf(up)).toEqual([
      { name: 'paused', granularity: 64 * KiB, flags: ['in-use'], inconsistent: false },
      { name: 'backup', granularity: 64 * KiB, flags: ['in-use', 'auto'], inconsistent: false },
    ]);
    // Not in the file yet (QEMU stores persistent bitmaps when it closes the image): refresh asks QEMU.
    expect((await engine.info(image, { forceShare: true })).bitmaps).toEqual([]);
    const refreshed = await impl.read(image, up);
    expect(bitmapsOf(refreshed.props!)).toEqual(bitmapsOf(up));
    expect((await impl.diff(image, refreshed.props!, news)).changes).toBe(false);

    qsd.write(64 * KiB, 4 * KiB, 1);
    qsd.write(3 * MiB, 128 * KiB, 2);
    expect(await qsd.stop()).toEqual({ code: 0, signal: null });
    qsd = undefined;

    // The dirty extents we read equal QEMU's own reading of the stored bitmap (qemu-nbd -B).
    const ours = (await engine.dumpBitmap(image, 'backup')).extents.map((x) => ({ start: Number(x.offset), length: Number(x.length) }));
    expect(ours).toEqual([{ start: 64 * KiB, length: 64 * KiB }, { start: 3 * MiB, length: 128 * KiB }]);
    expect(ours).toEqual(await dirtyExtents(image, 'backup'));
    expect((await engine.dumpBitmap(image, 'paused')).extents).toEqual([]);
    expect(imageCheck(image).status).toBe(0);

    // Offline again: the "backup" is taken, the bitmap reset by the resource (remove and add anew).
    const after = (await impl.read(image, refreshed.props!)).props!;
    expect(bitmapsOf(after)).toEqual([
      { name: 'paused', granularity: 64 * KiB, flags: [], inconsistent: false },
      { name: 'backup', granularity: 64 * KiB, flags: ['auto'], inconsistent: false },
    ]);
    const regranulate = { path: image, size: 4 * MiB, bitmaps: [{ name: 'backup', granularity: 4 * KiB }] };
    expect((await failure(impl.diff(image, after, regranulate))).message).toMatch(/^bitmaps: changing the granularity of bitmap 'backup' from 65536 to 4096/);
    const reset = (await impl.update(image, after, { ...regranulate, bitmaps: [{ name: 'backup', granularity: 4 * KiB, allowReset: true }] })).outs;
    expect(bitmapsOf(reset).find((b) => b.name === 'backup')).toEqual({ name: 'backup', granularity: 4 * KiB, flags: ['auto'], inconsistent: false });
    expect((await engine.dumpBitmap(image, 'backup')).extents).toEqual([]);
    expect(await dirtyExtents(image, 'backup')).toEqual([]);
    expect(imageCheck(image).status).toBe(0);
  });

  it('refuses_a_shrink_and_other_changes_while_the_daemon_holds_the_image_and_leaves_it_unchanged', async () => {
    const outs = await created({ bitmaps: [{ name: 'b' }] });
    qsd = await startQsd({ image });
    const before = md5(image);
    const holder = `process ${qsd.pid} (qemu-storage-daemon)`;
    for (const change of [{ size: 2 * MiB, allowShrink: true }, { refcountBits: 64 }, { lazyRefcounts: true }]) {
      const news = { path: image, size: 4 * MiB, qmpSocket: qsd.qmpSocket, ...change };
      const e = await failure(impl.diff(image, outs, news));
      expect(e.message).toContain(`cannot change while ${holder} holds the image for writing`);
      expect(e.message).toContain('Stop the VM first');
      // update asks the rules again: refused the same way, nothing written.
      expect((await failure(impl.update(image, outs, news))).message).toBe(e.message);
    }
    expect(md5(image)).toBe(before);
    expect(await qsd.stop()).toEqual({ code: 0, signal: null });
    qsd = undefined;
    expect(imageCheck(image).status).toBe(0);
    expect(imageInfo(image)['virtual-size']).toBe(4 * MiB);
  });

  it('fails_an_update_when_the_daemon_dies_mid_operation_then_offers_the_reset_of_its_inconsistent_bitmap', async () => {
    const outs = await created({ bitmaps: [{ name: 'b' }] });
    qsd = await startQsd({ image });
    qsd.write(0, 4 * KiB, 7);
    qsd.freeze();
    const socket = qsd.qmpSocket;
    const pending = impl.update(image, outs, { path: image, size: 4 * MiB, qmpSocket: socket, bitmaps: [{ name: 'b' }, { name: 'c' }] });
    let settled = false;
    pending.then(() => (settled = true), () => (settled = true));
    await new Promise((r) => setTimeout(r, 200));
    expect(settled).toBe(false); // frozen: QEMU answers nothing
    await qsd.kill();
    qsd = undefined;
    const e = await failure(pending);
    expect(e.code).toBe('CONNECTION');
    expect(e.message).toContain(`the QMP socket ${socket}`);

    // The writer died: 'b' stays in-use on disk, so it is inconsistent; keeping it is refused with the reset offered.
    const now = (await impl.read(image, { ...outs, qmpSocket: socket })).props!;
    expect(bitmapsOf(now)).toEqual([{ name: 'b', granularity: 64 * KiB, flags: ['in-use', 'auto'], inconsistent: true }]);
    const keep = { path: image, size: 4 * MiB, bitmaps: [{ name: 'b' }] };
    expect((await failure(impl.diff(image, now, keep))).message).toMatch(/^bitmaps: bitmap 'b' is inconsistent .*Set allowReset: true on that bitmap/);
    const fixed = (await impl.update(image, now, { ...keep, bitmaps: [{ name: 'b', allowReset: true }] })).outs;
    expect(bitmapsOf(fixed)).toEqual([{ name: 'b', granularity: 64 * KiB, flags: ['auto'], inconsistent: false }]);
    expect(imageCheck(image).status).toBe(0);
  });
});

describe.skipIf(skipWithoutQemu('resource-bitmaps'))('Image bitmaps offline (native engine)', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bm-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('creates_with_bitmaps_and_keeps_them_through_grow_refcount_width_and_data_file_raw_clearing', async () => {
    const image = path.join(dir, 'a.qcow2');
    const data = path.join(dir, 'a.raw');
    const base = { path: image, size: 4 * MiB, dataFile: data, dataFileRaw: true };
    const decl = [{ name: 'daily', granularity: 512 }, { name: 'weekly', granularity: 64 * MiB, enabled: false }];
    let outs = (await impl.create({ ...base, bitmaps: decl })).outs;
    expect(bitmapsOf(outs)).toEqual([
      { name: 'daily', granularity: 512, flags: ['auto'], inconsistent: false },
      { name: 'weekly', granularity: 64 * MiB, flags: [], inconsistent: false },
    ]);
    for (const change of [{ size: 64 * MiB }, { refcountBits: 1 }, { refcountBits: 64, lazyRefcounts: true }, { dataFileRaw: false }]) {
      const news = { ...base, ...change, bitmaps: decl };
      outs = (await impl.update(image, outs, news)).outs;
      expect(bitmapsOf(outs).map((b) => b.name), JSON.stringify(change)).toEqual(['daily', 'weekly']);
      expect(imageCheck(image).status, JSON.stringify(change)).toBe(0);
      Object.assign(base, change);
    }
    // manageAllBitmaps removes the undeclared one; enabled flips in place.
    outs = (await impl.update(image, outs, { ...base, bitmaps: [{ name: 'weekly', enabled: true }], manageAllBitmaps: true })).outs;
    expect(bitmapsOf(outs)).toEqual([{ name: 'weekly', granularity: 64 * MiB, flags: ['auto'], inconsistent: false }]);
    expect(imageCheck(image).status).toBe(0);
  });

  it('check_refuses_bitmaps_a_new_image_cannot_hold', async () => {
    const r = await impl.check({}, { path: path.join(dir, 'v2.qcow2'), size: '1M', compat: '0.10', bitmaps: [{ name: 'b' }] });
    expect(r.failures).toEqual([{ property: 'bitmaps', reason: expect.stringContaining('Cannot store dirty bitmaps in qcow2 v2 files') }]);
    expect(fs.existsSync(path.join(dir, 'v2.qcow2'))).toBe(false);
  });
});
