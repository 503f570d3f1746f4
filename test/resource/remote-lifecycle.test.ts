// The Image resource on a remote host, through Pulumi's real dynamic-provider host and a real
// sshd on 127.0.0.1 (the "remote" files are this machine's, reached only over SSH): preview, up,
// amend, resize, rebase, refresh with drift, adopt, replace, delete, the seed's refusals at
// preview, for both engines. Connection changes: another host is a replacement (allowReplace),
// new credentials are state only.

import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgAvailable, requireQemu } from '../helpers/qemu';
import { skipWithoutSshd, startSshd, type Sshd } from '../helpers/sshd';
import { scratchBase } from '../engines/helpers';
import { HostError, ProviderHost, Stack, UNKNOWN, serializedProvider } from './host';

const md5 = (f: string) => crypto.createHash('md5').update(fs.readFileSync(f)).digest('hex');
const qemu = (args: string[], cwd: string) => spawnSync('qemu-img', args, { cwd, encoding: 'utf8' });

const engines = ['native', 'qemu-img'] as const;
const haveQemu = qemuImgAvailable();
const skip = skipWithoutSshd('remote-lifecycle') || (!haveQemu && !requireQemu);

describe.skipIf(skip).each(engines)('Image on a remote host through the dynamic-provider host (%s engine)', (engine) => {
  let sshd: Sshd;
  let dir: string;
  let cwd: string;
  let host: ProviderHost;
  let provider: string;
  let connection: Record<string, unknown>;

  beforeAll(async () => {
    sshd = await startSshd();
    connection = { ...sshd.connection(), hostKey: sshd.hostKeyLine };
    dir = fs.mkdtempSync(path.join(scratchBase(), `qcow2-remote-life-${engine}-`));
    // The program's folder: nothing may appear here (every file is on the host).
    cwd = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-remote-prog-'));
    host = await ProviderHost.start(cwd);
    provider = await serializedProvider();
  }, 60_000);
  afterAll(async () => {
    host?.stop();
    await sshd?.stop();
    for (const d of [dir, cwd]) if (d) fs.rmSync(d, { recursive: true, force: true });
  });

  const stack = (name: string) => new Stack(host, provider, `urn:pulumi:test::qcow2::pulumi-nodejs:dynamic/qcow2:Image::${name}`);
  const at = (name: string) => path.join(dir, name);
  const raw = (name: string, extra: Record<string, unknown> = {}) =>
    ({ path: at(`${name}.qcow2`), size: '1G', dataFile: at(`${name}.raw`), dataFileRaw: true, engine, connection, ...extra });

  it('preview_needs_no_connection_and_creates_nothing', async () => {
    const s = stack('pre');
    // A host nobody listens on: Check and a create preview never dial.
    const p = await s.preview({ ...raw('pre'), size: UNKNOWN, connection: { ...connection, port: 1 } });
    expect(p).toEqual({ op: 'create', failures: [] });
    expect(fs.existsSync(at('pre.qcow2'))).toBe(false);
  });

  it('check_refuses_relative_paths_and_bad_connection_settings_without_connecting', async () => {
    const port = await stack('bad').preview({ path: at('p.qcow2'), size: '1M', engine, connection: { ...connection, port: 70000 } });
    expect(port.failures).toEqual([{ property: 'connection.port', reason: expect.stringMatching(/connection\.port must be <= 65535/) }]);
    const p = await stack('bad').preview({ path: 'rel.qcow2', size: '1M', dataFile: 'x.raw', source: 'src.raw', engine, connection: { ...connection, privateKey: 'not a key' } });
    const by = Object.fromEntries(p.failures.map((f) => [f.property, f.reason]));
    expect(by['connection.privateKey']).toMatch(/not a private key/);
    expect(by.path).toMatch(/must be an absolute path on 127\.0\.0\.1/);
    expect(by.dataFile).toMatch(/must be an absolute path/);
    expect(by.source).toMatch(/file: URL/);
    // No key material in any message.
    const wrong = { ...connection, privateKey: sshd.clientKey.privateKey.replace('KEY-----', 'KEY-----\nbroken') };
    const k = await stack('bad').preview({ path: at('p.qcow2'), size: '1M', engine, connection: wrong });
    for (const line of sshd.clientKey.privateKey.split('\n').slice(1, -2)) expect(JSON.stringify([p.failures, k.failures])).not.toContain(line);
  });

  it('up_creates_amends_refreshes_drift_and_destroys_on_the_host', async () => {
    const s = stack('life');
    const c = await s.up(raw('life'));
    expect(c.op).toBe('create');
    expect(c.outputs).toMatchObject({ virtualSize: 1073741824, dataFileRaw: true, engine, host: '127.0.0.1', path: at('life.qcow2') });
    for (const v of Object.values(c.outputs)) expect(v).not.toBeUndefined();
    expect(qemu(['check', at('life.qcow2')], dir).status).toBe(0);
    expect((await s.preview(raw('life'))).op).toBe('same');

    const u = await s.up(raw('life', { size: '2G', lazyRefcounts: true }));
    expect(u.op).toBe('update');
    expect(u.outputs).toMatchObject({ virtualSize: 2147483648, lazyRefcounts: true, dataFileRaw: true });
    expect(fs.statSync(at('life.raw')).size).toBe(2147483648);

    // Somebody changes the image by hand on the host: refresh shows it, the next up puts it back.
    expect(qemu(['resize', at('life.qcow2'), '3G'], dir).status).toBe(0);
    await s.refresh();
    expect(s.state!.outputs.virtualSize).toBe(3221225472);
    expect(s.state!.inputs.size).toBe(3221225472);
    await expect(s.preview(raw('life', { size: '2G', lazyRefcounts: true }))).rejects.toThrow(/allowShrink/);
    const ok = await s.up(raw('life', { size: '3G', lazyRefcounts: false }));
    expect(ok.outputs).toMatchObject({ virtualSize: 3221225472, lazyRefcounts: false });
    await s.destroy();
    expect(fs.existsSync(at('life.qcow2'))).toBe(false);
    expect(fs.existsSync(at('life.raw'))).toBe(false); // we created it, so it goes
    expect(fs.readdirSync(cwd)).toEqual([]);
  });

  it('refuses_the_seed_rules_at_preview_and_touches_nothing', async () => {
    const s = stack('seed');
    await s.up({ path: at('seed.qcow2'), size: '64M', dataFile: at('seed.raw'), engine, connection });
    const before = md5(at('seed.qcow2'));
    await expect(s.preview({ path: at('seed.qcow2'), size: '64M', dataFile: at('seed.raw'), dataFileRaw: true, engine, connection }))
      .rejects.toThrow(/data-file-raw cannot be set on existing images.*Set dataFileRaw: false to keep this image.*create a new image/s);
    await expect(s.preview({ path: at('seed.qcow2'), size: '32M', dataFile: at('seed.raw'), engine, connection })).rejects.toThrow(/allowShrink/);
    await expect(s.preview({ path: at('seed.qcow2'), size: '64M', dataFile: at('seed.raw'), clusterSize: 4096, engine, connection })).rejects.toThrow(/allowReplace/);
    expect(md5(at('seed.qcow2'))).toBe(before);
    await s.destroy();
  });

  it('rebases_onto_a_new_base_on_the_host', async () => {
    const base1 = stack('base1');
    const base2 = stack('base2');
    await base1.up({ path: at('base1.qcow2'), size: '64M', engine, connection });
    await base2.up({ path: at('base2.qcow2'), size: '64M', engine, connection });
    const o = stack('overlay');
    const c = await o.up({ path: at('overlay.qcow2'), backingFile: at('base1.qcow2'), backingFormat: 'qcow2', engine, connection });
    expect(c.outputs).toMatchObject({ virtualSize: 64 << 20, backingFile: at('base1.qcow2') });
    const r = await o.up({ path: at('overlay.qcow2'), backingFile: at('base2.qcow2'), backingFormat: 'qcow2', engine, connection });
    expect(r).toMatchObject({ op: 'update', outputs: { backingFile: at('base2.qcow2') } });
    expect(JSON.parse(qemu(['info', '--output=json', at('overlay.qcow2')], dir).stdout)['backing-filename']).toBe(at('base2.qcow2'));
    await o.destroy();
    await base1.destroy();
    await base2.destroy();
    expect(fs.existsSync(at('base2.qcow2'))).toBe(false);
  });

  it('records_the_backing_chain_on_the_host_refuses_a_base_rewritten_there_and_keeps_a_base_in_use', async () => {
    const base = stack('cbase');
    const vm = stack('cvm');
    await base.up({ path: at('cbase.qcow2'), size: '64M', engine, connection });
    expect(spawnSync('qemu-io', ['-c', 'write -P 0x33 0 1M', at('cbase.qcow2')], { cwd: dir }).status).toBe(0);
    const inputs = { path: at('cvm.qcow2'), backingFile: at('cbase.qcow2'), backingFormat: 'qcow2', engine, connection };
    const o = await vm.up(inputs);
    // The identities are the host's files' (device and inode as the host reports them).
    const st = fs.statSync(at('cbase.qcow2'), { bigint: true });
    expect(o.outputs.backingChain).toMatchObject([{ path: at('cbase.qcow2'), dev: st.dev.toString(), ino: st.ino.toString(), size: Number(st.size) }]);
    expect(o.outputs.identity).toMatch(/^sha256:[0-9a-f]{32}$/);
    expect((await vm.preview(inputs)).op).toBe('same');
    // The base, deleted while the overlay uses it: refused, nothing deleted.
    await expect(base.destroy()).rejects.toThrow(/cbase\.qcow2 is the backing file of .*cvm\.qcow2.*Nothing was deleted/s);
    expect(fs.existsSync(at('cbase.qcow2'))).toBe(true);
    // By hand on the host, at the same path: a new base written over the old one.
    expect(qemu(['create', '-q', '-f', 'qcow2', at('cbase.qcow2'), '64M'], dir).status).toBe(0);
    await vm.refresh();
    expect(vm.state!.outputs.backingDrift).toMatch(/cbase\.qcow2 was rewritten in place/);
    await expect(vm.preview(inputs)).rejects.toThrow(/backing chain of this image changed outside the program/);
    await vm.destroy();
    await base.destroy();
    expect(fs.existsSync(at('cbase.qcow2'))).toBe(false);
  });

  it('adopts_an_existing_raw_disk_without_changing_a_byte_and_keeps_it', async () => {
    const disk = at('disk.raw');
    fs.writeFileSync(disk, crypto.randomBytes(1 << 20));
    fs.truncateSync(disk, 8 << 20);
    const before = md5(disk);
    const s = stack('adoptraw');
    const c = await s.up({ path: at('adoptraw.qcow2'), dataFile: disk, dataFileRaw: true, adopt: true, engine, connection });
    expect(c.outputs).toMatchObject({ virtualSize: 8 << 20, dataFileRaw: true, createdDataFile: false });
    expect(md5(disk)).toBe(before);
    expect(qemu(['compare', '-f', 'raw', '-F', 'qcow2', disk, at('adoptraw.qcow2')], dir).stdout).toMatch(/identical/);
    await s.destroy();
    expect(md5(disk)).toBe(before);
    // An existing image is never overwritten: adopting it is the only way.
    const mine = stack('mine');
    await mine.up({ path: at('mine.qcow2'), size: '1M', engine, connection });
    await expect(stack('clobber').up({ path: at('mine.qcow2'), size: '1M', engine, connection })).rejects.toThrow(/already exists.*adopt: true/);
    const adopted = await stack('adopted').up({ path: at('mine.qcow2'), size: '1M', adopt: true, engine, connection });
    expect(adopted.outputs).toMatchObject({ adopted: true });
    await mine.destroy();
  });

  it('imports_a_file_of_this_machine_into_an_image_on_the_host_sparse_aware', async () => {
    const src = path.join(cwd, 'src.raw');
    fs.writeFileSync(src, crypto.randomBytes(256 << 10));
    fs.truncateSync(src, 4 << 20);
    const s = stack('imported');
    const c = await s.up({ path: at('imported.qcow2'), source: 'file:./src.raw', sourceFormat: 'raw', dataFile: at('imported.raw'), dataFileRaw: true, engine, connection });
    expect(c.outputs).toMatchObject({ virtualSize: 4 << 20, dataFileRaw: true });
    expect(qemu(['compare', '-f', 'raw', '-F', 'qcow2', src, at('imported.qcow2')], dir).stdout).toMatch(/identical/);
    // The hole was not sent: the data file on the host holds only the data.
    expect(fs.statSync(at('imported.raw')).blocks * 512).toBeLessThan(1 << 20);
    expect(fs.readdirSync(dir).filter((f) => f.startsWith('.'))).toEqual([]); // no temp left behind
    await s.destroy();
    fs.rmSync(src);
  });

  it('a_new_host_is_a_replacement_only_with_allowReplace_and_new_credentials_are_state_only', async () => {
    const s = stack('where');
    await s.up({ path: at('where.qcow2'), size: '1M', engine, connection });
    const before = md5(at('where.qcow2'));
    // The same machine under another name: connection.host decides, so it counts as another host.
    const elsewhere = { ...connection, host: 'localhost' };
    await expect(s.preview({ path: at('where.qcow2'), size: '1M', engine, connection: elsewhere })).rejects.toThrow(/connection\.host.*allowReplace: true/);
    // New credentials (a password added, another dial limit): an update of the state alone.
    const p = await s.preview({ path: at('where.qcow2'), size: '1M', engine, connection: { ...connection, dialErrorLimit: 3 } });
    expect(p.op).toBe('update');
    const u = await s.up({ path: at('where.qcow2'), size: '1M', engine, connection: { ...connection, dialErrorLimit: 3 } });
    expect(u.outputs.connection).toMatchObject({ dialErrorLimit: 3 });
    expect(md5(at('where.qcow2'))).toBe(before);
    // Moving to the local machine is a replacement too.
    await expect(s.preview({ path: at('where.qcow2'), size: '1M', engine })).rejects.toThrow(/from 127\.0\.0\.1 to this machine/);
    await s.destroy();
  });

  it('refresh_of_a_missing_image_drops_it_and_errors_name_the_way_forward', async () => {
    const s = stack('gone');
    await s.up({ path: at('gone.qcow2'), size: '1M', engine, connection });
    fs.rmSync(at('gone.qcow2'));
    await s.refresh();
    expect(s.state).toBeUndefined();
    const e = await stack('err').up({ path: at('err.qcow2'), dataFile: at('nothere.raw'), adopt: true, engine, connection }).catch((x) => x);
    expect(e).toBeInstanceOf(HostError);
    expect(String(e.message)).toMatch(/adopt: there is nothing to adopt.*Remove adopt/);
  });
});
