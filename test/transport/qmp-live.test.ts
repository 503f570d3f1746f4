// The QMP client against a real QEMU: qemu-storage-daemon holding a qcow2 image like a running
// VM, with guest writes through its NBD (or FUSE) export. Live resize, persistent bitmaps that
// record guest writes and reach the image when the daemon stops, the node found by the image's
// path, the lock holder's pid, and a daemon that freezes or dies mid-command.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  addBitmap,
  blockResize,
  clearBitmap,
  describeHolder,
  disableBitmap,
  enableBitmap,
  findNodeByImage,
  imageHolders,
  isQmpError,
  mergeBitmaps,
  QmpClient,
  queryBlock,
  queryDirtyBitmaps,
  queryNamedBlockNodes,
  removeBitmap,
} from '../../provider/transport/qmp';
import { createImage, dirtyExtents, Extent, imageCheck, imageInfo, Qsd, skipWithoutQsd, startQsd } from '../helpers/qsd';
import { failure } from './support';

const MiB = 1024 * 1024;
const KiB = 1024;

/** The extents a bitmap of `granularity` marks for these writes (each rounded out to whole bits, merged). */
function expectedExtents(writes: [number, number][], granularity: number): Extent[] {
  const bits = new Set<number>();
  for (const [off, len] of writes) for (let b = Math.floor(off / granularity); b * granularity < off + len; b++) bits.add(b);
  const out: Extent[] = [];
  for (const b of [...bits].sort((x, y) => x - y)) {
    const last = out[out.length - 1];
    if (last !== undefined && last.start + last.length === b * granularity) last.length += granularity;
    else out.push({ start: b * granularity, length: granularity });
  }
  return out;
}

type InfoBitmap = { name: string; granularity: number; flags: string[] };
function infoBitmaps(image: string, force = false): InfoBitmap[] {
  const info = force ? imageInfoShared(image) : imageInfo(image);
  const data = (info['format-specific'] as { data: { bitmaps?: InfoBitmap[] } }).data;
  return data.bitmaps ?? [];
}

function imageInfoShared(image: string): Record<string, unknown> {
  const r = spawnSync(process.env.QEMU_IMG ?? 'qemu-img', ['info', '-U', '--output=json', image], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

describe.skipIf(skipWithoutQsd('qmp-live'))('QMP against qemu-storage-daemon', () => {
  let dir: string;
  let image: string;
  let qsd: Qsd | undefined;
  let qmp: QmpClient | undefined;

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-qmp-'));
    image = path.join(dir, 'vm.qcow2');
    createImage(image, '4M');
  });

  afterEach(async () => {
    await qmp?.close();
    qmp = undefined;
    await qsd?.kill();
    qsd = undefined;
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function start(opts: { export?: 'nbd' | 'fuse' } = {}): Promise<{ qsd: Qsd; qmp: QmpClient }> {
    qsd = await startQsd({ image, ...opts });
    qmp = await QmpClient.connect(qsd.qmpSocket, { commandTimeoutMs: 20_000 });
    return { qsd, qmp };
  }

  it('greets_negotiates_and_lists_the_block_graph', async () => {
    const { qmp } = await start();
    expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(qmp.version).toMatch(/^\d+\.\d+\.\d+$/);
    expect(await queryBlock(qmp)).toEqual([]); // a storage daemon has no guest devices
    const nodes = await queryNamedBlockNodes(qmp);
    const disk = nodes.find((n) => n.nodeName === 'disk0')!;
    expect(disk).toMatchObject({ driver: 'qcow2', file: image, readOnly: false, virtualSize: 4n * BigInt(MiB), dirtyBitmaps: [] });
    expect(nodes.find((n) => n.nodeName === 'disk0-file')).toMatchObject({ driver: 'file', file: image });
  });

  it('finds_the_node_by_image_path_through_a_symlink_a_hard_link_and_a_relative_name', async () => {
    const link = path.join(dir, 'link.qcow2');
    fs.symlinkSync(image, link);
    const hard = path.join(dir, 'hard.qcow2');
    fs.linkSync(image, hard);
    const { qmp } = await start();
    expect((await findNodeByImage(qmp, image)).nodeName).toBe('disk0');
    expect((await findNodeByImage(qmp, link)).nodeName).toBe('disk0');
    expect((await findNodeByImage(qmp, hard)).nodeName).toBe('disk0');
    expect((await findNodeByImage(qmp, path.relative(process.cwd(), image))).nodeName).toBe('disk0');

    const other = path.join(dir, 'other.qcow2');
    createImage(other, '1M');
    const e = await failure(findNodeByImage(qmp, other));
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toContain(`does not have ${other} open`);
    expect(e.message).toContain(`'disk0' (${image})`);
    expect(e.message).toContain(qsd!.qmpSocket);
    const gone = await failure(findNodeByImage(qmp, path.join(dir, 'missing.qcow2')));
    expect(gone.code).toBe('NOT_FOUND');
    expect(gone.message).toContain('does not exist');
  });

  it('grows_the_image_live_and_the_guest_sees_the_new_size', async () => {
    if (skipWithoutQsd('qmp-live grow', { fuse: true })) return;
    const { qsd, qmp } = await start({ export: 'fuse' });
    expect(qsd.exportSize()).toBe(4 * MiB);
    const node = await findNodeByImage(qmp, image);
    await blockResize(qmp, node.nodeName, 8n * BigInt(MiB));
    expect((await findNodeByImage(qmp, image)).virtualSize).toBe(8n * BigInt(MiB));
    // The FUSE export caches attributes for a moment: poll a bounded number of times.
    let seen = qsd.exportSize();
    for (let i = 0; i < 300 && seen !== 8 * MiB; i++) {
      await new Promise((r) => setTimeout(r, 20));
      seen = qsd.exportSize();
    }
    expect(seen).toBe(8 * MiB);
    qsd.write(7 * MiB, 64 * KiB, 0x5a); // the guest writes into the new space
    await qmp.close();
    expect(await qsd.stop()).toEqual({ code: 0, signal: null });
    expect(imageInfo(image)['virtual-size']).toBe(8 * MiB);
    expect(imageCheck(image).status).toBe(0);
  });

  it('reports_the_nbd_exports_refusal_of_a_live_resize_with_qmp_class_and_desc', async () => {
    const { qsd, qmp } = await start();
    const e = await failure(blockResize(qmp, 'disk0', 8n * BigInt(MiB)));
    expect(isQmpError(e)).toBe(true);
    expect(e).toMatchObject({ code: 'QMP', errorClass: 'GenericError', command: 'block_resize', file: qsd.qmpSocket });
    expect(e.message).toContain(`QEMU refused 'block_resize' on the QMP socket ${qsd.qmpSocket}: Permission conflict`);
    expect(e.message).toContain('(GenericError)');
    const unknown = await failure(qmp.execute('no-such-command'));
    expect(unknown).toMatchObject({ code: 'QMP', errorClass: 'CommandNotFound' });
    expect(qsd.exportSize()).toBe(4 * MiB);
  });

  it('records_guest_writes_in_a_persistent_bitmap_that_reaches_the_image', async () => {
    const { qsd, qmp } = await start();
    const node = (await findNodeByImage(qmp, image)).nodeName;
    await addBitmap(qmp, node, 'backup', { granularity: 64 * KiB });
    await addBitmap(qmp, node, 'fine', { granularity: 512 });
    await addBitmap(qmp, node, 'off', { disabled: true });
    expect(await queryDirtyBitmaps(qmp, node)).toEqual([
      // QEMU lists the newest first.
      { name: 'off', granularity: 64 * KiB, recording: false, busy: false, persistent: true, inconsistent: false, count: 0n },
      { name: 'fine', granularity: 512, recording: true, busy: false, persistent: true, inconsistent: false, count: 0n },
      { name: 'backup', granularity: 64 * KiB, recording: true, busy: false, persistent: true, inconsistent: false, count: 0n },
    ]);
    // While QEMU holds the image, persistent bitmaps it loaded are marked in-use on disk; new ones reach the disk at close.
    const writes: [number, number][] = [
      [0, 4 * KiB],
      [MiB, 200 * KiB],
      [3 * MiB + 512, 512],
    ];
    for (const [off, len] of writes) qsd.write(off, len, 0xab);
    const byName = new Map((await queryDirtyBitmaps(qmp, node)).map((b) => [b.name, b]));
    expect(byName.get('backup')!.count).toBe(BigInt(expectedExtents(writes, 64 * KiB).reduce((s, e) => s + e.length, 0)));
    expect(byName.get('fine')!.count).toBe(BigInt(4 * KiB + 200 * KiB + 512));
    expect(byName.get('off')!.count).toBe(0n);

    await qmp.close();
    expect(await qsd.stop()).toEqual({ code: 0, signal: null });
    // Bitmaps created in one session reach the directory newest first (QEMU keeps its list newest first).
    expect(infoBitmaps(image)).toEqual([
      { name: 'off', granularity: 64 * KiB, flags: [] },
      { name: 'fine', granularity: 512, flags: ['auto'] },
      { name: 'backup', granularity: 64 * KiB, flags: ['auto'] },
    ]);
    expect(imageCheck(image).status).toBe(0);
    expect(await dirtyExtents(image, 'backup')).toEqual(expectedExtents(writes, 64 * KiB));
    expect(await dirtyExtents(image, 'fine')).toEqual(expectedExtents(writes, 512));
    expect(await dirtyExtents(image, 'off')).toEqual([]);
  });

  it('enables_disables_clears_merges_and_removes_bitmaps_live', async () => {
    const { qsd, qmp } = await start();
    await addBitmap(qmp, 'disk0', 'a', { granularity: 64 * KiB });
    qsd.write(0, 64 * KiB, 1);
    await disableBitmap(qmp, 'disk0', 'a');
    qsd.write(MiB, 64 * KiB, 2); // not recorded
    await enableBitmap(qmp, 'disk0', 'a');
    qsd.write(2 * MiB, 64 * KiB, 3);
    const a = (await queryDirtyBitmaps(qmp, 'disk0')).find((b) => b.name === 'a')!;
    expect(a).toMatchObject({ recording: true, count: BigInt(128 * KiB) });

    await addBitmap(qmp, 'disk0', 'copy', { granularity: 64 * KiB, disabled: true });
    await mergeBitmaps(qmp, 'disk0', 'copy', ['a']);
    await clearBitmap(qmp, 'disk0', 'a');
    await addBitmap(qmp, 'disk0', 'gone');
    await removeBitmap(qmp, 'disk0', 'gone');
    const all = new Map((await queryDirtyBitmaps(qmp, 'disk0')).map((b) => [b.name, b]));
    expect([...all.keys()].sort()).toEqual(['a', 'copy']);
    expect(all.get('a')!.count).toBe(0n);
    expect(all.get('copy')!).toMatchObject({ recording: false, count: BigInt(128 * KiB) });

    const dup = await failure(addBitmap(qmp, 'disk0', 'a'));
    expect(dup).toMatchObject({ code: 'QMP', errorClass: 'GenericError' });
    expect(dup.message).toContain("Bitmap already exists: a");
    const noNode = await failure(addBitmap(qmp, 'nope', 'x'));
    expect(noNode.message).toContain("Cannot find device='nope' nor node-name='nope'");

    await qmp.close();
    await qsd.stop();
    expect(await dirtyExtents(image, 'copy')).toEqual([
      { start: 0, length: 64 * KiB },
      { start: 2 * MiB, length: 64 * KiB },
    ]);
    expect(await dirtyExtents(image, 'a')).toEqual([]);
    expect(infoBitmaps(image).map((b) => b.name)).toEqual(['copy', 'a']);
  });

  it('names_the_daemon_as_the_lock_holder_while_it_runs', async () => {
    expect(imageHolders(image)).toEqual([]);
    const { qsd } = await start();
    const holders = imageHolders(image);
    expect(holders).toHaveLength(1);
    expect(holders[0]).toMatchObject({ pid: qsd.pid, command: 'qemu-storage-daemon' });
    expect(holders[0]!.uses).toEqual(expect.arrayContaining(['consistent-read', 'write', 'resize']));
    expect(describeHolder(holders[0]!)).toBe(`process ${qsd.pid} (qemu-storage-daemon)`);
    await qmp!.close();
    await qsd.stop();
    expect(imageHolders(image)).toEqual([]);
  });

  it('fails_a_command_pending_when_the_daemon_dies_and_leaves_in_use_bitmaps', async () => {
    const { qsd, qmp } = await start();
    await addBitmap(qmp, 'disk0', 'b', { granularity: 64 * KiB });
    await qmp.close();
    expect(await qsd.stop()).toEqual({ code: 0, signal: null }); // stored: 'b' is on disk now

    const again = await start();
    again.qsd.write(0, 4 * KiB, 7);
    expect(infoBitmaps(image, true)).toEqual([{ name: 'b', granularity: 64 * KiB, flags: ['in-use', 'auto'] }]);
    again.qsd.freeze();
    const pending = again.qmp.execute('query-named-block-nodes');
    let settled = false;
    void pending.then(
      () => (settled = true),
      () => (settled = true),
    );
    await new Promise((r) => setTimeout(r, 100));
    expect(settled).toBe(false); // frozen: no answer
    await again.qsd.kill();
    const e = await failure(pending);
    expect(e.code).toBe('CONNECTION');
    expect(e.message).toContain(`the QMP socket ${again.qsd.qmpSocket} closed while 'query-named-block-nodes' was pending`);
    expect(e.message).toContain('Whether the command took effect is unknown');
    expect(e.file).toBe(again.qsd.qmpSocket);
    expect(again.qmp.open).toBe(false);
    expect((await failure(again.qmp.execute('query-block'))).message).toBe(e.message);

    // The writer died: the bitmap stays in-use, and QEMU treats it as inconsistent when it loads it.
    expect(infoBitmaps(image)).toEqual([{ name: 'b', granularity: 64 * KiB, flags: ['in-use', 'auto'] }]);
    const third = await start();
    expect(await queryDirtyBitmaps(third.qmp, 'disk0')).toEqual([
      { name: 'b', granularity: 64 * KiB, recording: false, busy: false, persistent: true, inconsistent: true, count: 0n },
    ]);
  });

  it('times_out_on_a_frozen_daemon_and_drops_the_late_answer', async () => {
    const { qsd, qmp } = await start();
    qsd.freeze();
    const e = await failure(qmp.execute('query-block', undefined, { timeoutMs: 200 }));
    expect(e.code).toBe('CONNECTION');
    expect(e.message).toContain(`QEMU did not answer 'query-block' on the QMP socket ${qsd.qmpSocket} within 200 ms`);
    qsd.thaw();
    // The late answer to the first command is dropped; the next command gets its own.
    const nodes = await queryNamedBlockNodes(qmp);
    expect(nodes.map((n) => n.nodeName).sort()).toEqual(['disk0', 'disk0-file']);
    const ac = new AbortController();
    qsd.freeze();
    const p = qmp.execute('query-block', undefined, { signal: ac.signal });
    ac.abort();
    expect((await failure(p)).message).toContain('was cancelled');
    qsd.thaw();
    expect(await queryBlock(qmp)).toEqual([]);
  });

  it('delivers_events_to_listeners_and_waiters', async () => {
    const { qsd, qmp } = await start();
    const seen: string[] = [];
    const off = qmp.onEvent((e) => seen.push(e.event));
    const deleted = qmp.waitForEvent('BLOCK_EXPORT_DELETED', { filter: (e) => e.data.id === 'disk0-export' });
    await qmp.execute('block-export-del', { id: 'disk0-export' });
    const ev = await deleted;
    expect(ev.data).toEqual({ id: 'disk0-export' });
    expect(ev.timestamp.seconds).toBeGreaterThan(1_600_000_000);
    expect(seen).toContain('BLOCK_EXPORT_DELETED');
    off();
    // With the export gone nothing unshares resize: block_resize now works on the NBD daemon too.
    await blockResize(qmp, 'disk0', 8n * BigInt(MiB));
    const none = await failure(qmp.waitForEvent('BLOCK_EXPORT_DELETED', { timeoutMs: 50 }));
    expect(none.message).toBe(`No BLOCK_EXPORT_DELETED event from the QMP socket ${qsd.qmpSocket} within 50 ms`);
    await qmp.close();
    const after = await failure(qmp.execute('query-block'));
    expect(after.message).toBe(`The connection to the QMP socket ${qsd.qmpSocket} was closed`);
  });

  it('says_why_it_cannot_connect', async () => {
    const missing = path.join(dir, 'none.sock');
    const e1 = await failure(QmpClient.connect(missing, { property: 'qmpSocket' }));
    expect(e1).toMatchObject({ code: 'CONNECTION', file: missing, property: 'qmpSocket' });
    expect(e1.message).toContain(`No QMP socket at ${missing}`);
    expect(e1.message).toContain('check qmpSocket');

    const plain = path.join(dir, 'plain');
    fs.writeFileSync(plain, '');
    expect((await failure(QmpClient.connect(plain))).message).toContain(`${plain} is not a socket`);

    // A socket left by a process that died.
    const { qsd } = await start();
    const second = await failure(QmpClient.connect(qsd.qmpSocket, { connectTimeoutMs: 300 }));
    expect(second.message).toContain('sent no greeting within 300 ms');
    expect(second.message).toContain('one client at a time');
    await qmp!.close();
    qmp = undefined;
    await qsd.kill({ keepFiles: true });
    const stale = await failure(QmpClient.connect(qsd.qmpSocket));
    expect(stale.message).toContain(`Nothing is listening on the QMP socket ${qsd.qmpSocket}`);

    // Something that is not QEMU.
    const other = path.join(dir, 'other.sock');
    const server = net.createServer((s) => s.end('SSH-2.0-OpenSSH_9.2\r\n'));
    await new Promise<void>((r) => server.listen(other, r));
    try {
      const notQmp = await failure(QmpClient.connect(other, { connectTimeoutMs: 2000 }));
      expect(notQmp.message).toContain(`the QMP socket ${other} is not speaking QMP`);
    } finally {
      server.close();
    }
  });
});
