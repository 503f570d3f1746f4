// The Image resource through Pulumi's real dynamic-provider host: preview, up, update, refresh,
// refusals of the seed's rules at preview time, adopt and destroy, for both engines.

import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgAvailable, requireQemu } from '../helpers/qemu';
import * as impl from '../../provider/resource/impl';
import { HostError, HostInScratch, ProviderHost, Stack, UNKNOWN, serializedProvider } from './host';

const md5 = (f: string) => crypto.createHash('md5').update(fs.readFileSync(f)).digest('hex');
const qemu = (args: string[], cwd: string) => spawnSync('qemu-img', args, { cwd, encoding: 'utf8' });

const engines = ['native', 'qemu-img'] as const;
const haveQemu = qemuImgAvailable();
if (!haveQemu && !requireQemu) console.warn('lifecycle: qemu-img not installed; the qemu-img engine and drift cases are skipped');

describe.each(engines)('Image lifecycle through the dynamic-provider host (%s engine)', (engine) => {
  const skip = !haveQemu && (engine === 'qemu-img' || !requireQemu);
  let dir: string;
  let host: ProviderHost;
  let provider: string;

  const scratch = new HostInScratch(`qcow2-life-${engine}-`);
  beforeAll(async () => {
    if (skip) return;
    if (engine === 'qemu-img' && !fs.existsSync(path.resolve(__dirname, '../../dist/provider/engines/qemuimg/engine.js'))) {
      throw new Error('the qemu-img engine is not built');
    }
    ({ dir, host, provider } = await scratch.start());
  }, 60_000);
  afterAll(() => scratch.stop());

  const stack = (name: string) => new Stack(host, provider, `urn:pulumi:test::qcow2::pulumi-nodejs:dynamic/qcow2:Image::${name}`);
  const raw = (name: string, extra: Record<string, unknown> = {}) => ({ path: `${name}.qcow2`, size: '1G', dataFile: `${name}.raw`, dataFileRaw: true, engine, ...extra });

  it.skipIf(skip)('preview_creates_nothing_and_passes_unknown_values', async () => {
    const s = stack('pre');
    const p = await s.preview({ ...raw('pre'), size: UNKNOWN });
    expect(p).toEqual({ op: 'create', failures: [] });
    expect(fs.existsSync(path.join(dir, 'pre.qcow2'))).toBe(false);
    expect(fs.existsSync(path.join(dir, 'pre.raw'))).toBe(false);
  });

  it.skipIf(skip)('check_reports_one_failure_per_bad_property', async () => {
    const s = stack('bad');
    const p = await s.preview({ path: 'bad.qcow2', size: 'lots', clusterSize: 1000, compat: '2.0', engine });
    const props = p.failures.map((f) => f.property).sort();
    expect(props).toEqual(['clusterSize', 'compat', 'size']);
    for (const f of p.failures) expect(f.reason).toMatch(/allowed|one of/);
  });

  it.skipIf(skip)('up_creates_then_amends_in_place_and_refreshes_drift', async () => {
    const s = stack('life');
    const c = await s.up(raw('life'));
    expect(c.op).toBe('create');
    expect(c.outputs).toMatchObject({ virtualSize: 1073741824, dataFileRaw: true, clusterSize: 65536, compat: '1.1', engine });
    for (const v of Object.values(c.outputs)) expect(v).not.toBeUndefined();
    expect((await s.preview(raw('life'))).op).toBe('same');

    const u = await s.up(raw('life', { size: '2G', lazyRefcounts: true }));
    expect(u.op).toBe('update');
    expect(u.outputs).toMatchObject({ virtualSize: 2147483648, lazyRefcounts: true, dataFileRaw: true });
    expect(fs.statSync(path.join(dir, 'life.raw')).size).toBe(2147483648);

    if (haveQemu) {
      // Somebody changes the image by hand: refresh shows it, the next up puts it back.
      expect(qemu(['resize', 'life.qcow2', '3G'], dir).status).toBe(0);
      await s.refresh();
      expect(s.state!.outputs.virtualSize).toBe(3221225472);
      expect(s.state!.inputs.size).toBe(3221225472);
      // Shrinking back needs allowShrink: the drift is refused at preview rather than silently cut.
      await expect(s.preview(raw('life', { size: '2G', lazyRefcounts: true }))).rejects.toThrow(/allowShrink/);
      await expect(s.up(raw('life', { size: '2G', lazyRefcounts: true }))).rejects.toThrow(/allowShrink/);
      const ok = await s.up(raw('life', { size: '3G', lazyRefcounts: false }));
      expect(ok.outputs).toMatchObject({ virtualSize: 3221225472, lazyRefcounts: false });
    }
    await s.destroy();
    expect(fs.existsSync(path.join(dir, 'life.qcow2'))).toBe(false);
    expect(fs.existsSync(path.join(dir, 'life.raw'))).toBe(false); // we created it, so it goes
  });

  it.skipIf(skip)('refuses_the_seed_rules_at_preview_and_touches_nothing', async () => {
    const s = stack('seed');
    await s.up({ path: 'seed.qcow2', size: '64M', dataFile: 'seed.raw', engine });
    const before = md5(path.join(dir, 'seed.qcow2'));
    // Enabling data-file-raw on an existing image.
    await expect(s.preview({ path: 'seed.qcow2', size: '64M', dataFile: 'seed.raw', dataFileRaw: true, engine }))
      .rejects.toThrow(/data-file-raw cannot be set on existing images.*Set dataFileRaw: false to keep this image.*create a new image/s);
    expect(md5(path.join(dir, 'seed.qcow2'))).toBe(before);
    await s.destroy();

    const r = stack('seedraw');
    await r.up(raw('seedraw', { size: '64M' }));
    fs.copyFileSync(path.join(dir, 'seedraw.qcow2'), path.join(dir, 'base.qcow2'));
    // A backing file on a data-file-raw image: refused by check (same words as qemu-img create).
    const p = await r.preview(raw('seedraw', { size: '64M', backingFile: 'base.qcow2', backingFormat: 'qcow2' }));
    expect(p.failures.map((f) => f.reason).join()).toMatch(/Backing file and data-file-raw cannot be used at the same time/);
    // ...and also when the same plan clears data-file-raw: two steps, not one.
    await expect(r.preview(raw('seedraw', { size: '64M', dataFileRaw: false, backingFile: 'base.qcow2', backingFormat: 'qcow2' })))
      .rejects.toThrow(/Backing file and data-file-raw cannot be used at the same time/);
    // Shrink without allowShrink, and a create-only change without allowReplace.
    await expect(r.preview(raw('seedraw', { size: '32M' }))).rejects.toThrow(/allowShrink/);
    await expect(r.preview(raw('seedraw', { size: '64M', clusterSize: 4096 }))).rejects.toThrow(/allowReplace/);
    // Clearing data-file-raw is an in-place amend.
    const cleared = await r.up(raw('seedraw', { size: '64M', dataFileRaw: false }));
    expect(cleared).toMatchObject({ op: 'update', outputs: { dataFileRaw: false } });
    await r.destroy();
  });

  it.skipIf(skip || !haveQemu)('a_downgrade_with_snapshots_is_previewed_and_carried_out_as_qemu_img_allows_it_and_refused_where_it_refuses', async () => {
    const s = stack('snap');
    await s.up({ path: 'snap.qcow2', size: '64M', engine });
    expect(s.state!.outputs.snapshots).toBe(0);
    // An internal snapshot made by hand; refresh records it in the state.
    expect(qemu(['snapshot', '-c', 's1', 'snap.qcow2'], dir).status).toBe(0);
    await s.refresh();
    expect(s.state!.outputs.snapshots).toBe(1);
    const before = md5(path.join(dir, 'snap.qcow2'));
    // Grown in the same change, the snapshot (64M) no longer fits v2: preview and update refuse
    // alike, in qemu-img's words with the way forward, and nothing changes.
    const previewed = await s.preview({ path: 'snap.qcow2', size: '128M', compat: '0.10', engine }).catch((e: Error) => e);
    const updated = await s.up({ path: 'snap.qcow2', size: '128M', compat: '0.10', engine }).catch((e: Error) => e);
    expect(previewed).toBeInstanceOf(HostError);
    expect(updated).toBeInstanceOf(HostError);
    expect((previewed as Error).message).toMatch(/Internal snapshots prevent downgrade of image.*keep compat 1\.1/s);
    expect((updated as Error).message).toMatch(/Internal snapshots prevent downgrade of image/);
    expect(md5(path.join(dir, 'snap.qcow2'))).toBe(before);
    // At its own size the snapshot fits v2: previewed as an update and carried out, the snapshot kept.
    expect((await s.preview({ path: 'snap.qcow2', size: '64M', compat: '0.10', engine })).op).toBe('update');
    expect((await s.up({ path: 'snap.qcow2', size: '64M', compat: '0.10', engine })).outputs).toMatchObject({ compat: '0.10', snapshots: 1 });
    expect(qemu(['check', 'snap.qcow2'], dir).status).toBe(0);
    await s.destroy();
  });

  it.skipIf(skip)('opted_in_replacement_on_the_same_path_deletes_first', async () => {
    const s = stack('rep');
    await s.up({ path: 'rep.qcow2', size: '64M', engine });
    const r = await s.preview({ path: 'rep.qcow2', size: '64M', clusterSize: 4096, allowReplace: true, engine });
    expect(r.op).toBe('replace');
    const up = await s.up({ path: 'rep.qcow2', size: '64M', clusterSize: 4096, allowReplace: true, engine });
    expect(up).toMatchObject({ op: 'replace', outputs: { clusterSize: 4096 } });
    await s.destroy();
  });

  it.skipIf(skip)('adopts_an_existing_raw_disk_without_changing_a_byte', async () => {
    const disk = path.join(dir, 'disk.raw');
    fs.writeFileSync(disk, crypto.randomBytes(1 << 20));
    fs.truncateSync(disk, 8 << 20);
    const before = md5(disk);
    const s = stack('adoptraw');
    const c = await s.up({ path: 'adoptraw.qcow2', dataFile: 'disk.raw', dataFileRaw: true, adopt: true, engine });
    expect(c.outputs).toMatchObject({ virtualSize: 8 << 20, dataFileRaw: true, createdDataFile: false });
    expect(md5(disk)).toBe(before);
    if (haveQemu) expect(qemu(['compare', '-f', 'raw', '-F', 'qcow2', 'disk.raw', 'adoptraw.qcow2'], dir).stdout).toMatch(/identical/);
    await s.destroy();
    expect(fs.existsSync(disk)).toBe(true); // the user's data file stays
    expect(md5(disk)).toBe(before);
  });

  it.skipIf(skip)('adopts_an_existing_image_only_when_it_matches', async () => {
    const s0 = stack('mine');
    await s0.up({ path: 'mine.qcow2', size: '64M', lazyRefcounts: true, engine });
    const before = md5(path.join(dir, 'mine.qcow2'));
    const bad = stack('adopt-bad');
    await expect(bad.up({ path: 'mine.qcow2', size: '128M', adopt: true, engine })).rejects.toThrow(/does not match.*size/);
    const good = stack('adopt-good');
    const a = await good.up({ path: 'mine.qcow2', size: '64M', adopt: true, engine });
    expect(a.outputs).toMatchObject({ adopted: true, lazyRefcounts: true });
    await good.destroy(); // adopted: kept
    expect(md5(path.join(dir, 'mine.qcow2'))).toBe(before);
    await expect(stack('clobber').up({ path: 'mine.qcow2', size: '64M', engine })).rejects.toThrow(/already exists.*adopt: true/);
    await s0.destroy();
  });

  it.skipIf(skip || !haveQemu)('a_header_pointed_at_a_decoy_is_never_followed_and_destroy_removes_only_what_was_created', async () => {
    // The decoy attack: the image's header is pointed at another file of the user's by hand.
    const decoy = path.join(dir, 'decoy.bin');
    fs.writeFileSync(decoy, crypto.randomBytes(1 << 20));
    const before = md5(decoy);
    const s = stack('decoy');
    const spec = { path: 'decoy.qcow2', size: '8M', dataFile: 'decoy-own.raw', engine };
    await s.up(spec);
    expect(qemu(['amend', '-o', `data_file=${decoy}`, 'decoy.qcow2'], dir).status).toBe(0);
    const header = md5(path.join(dir, 'decoy.qcow2'));
    // A grow would extend the decoy, a shrink truncate it: both refused, naming both files.
    await expect(s.up({ ...spec, size: '16M' })).rejects.toThrow(/names data file '[^']*decoy\.bin', but this resource recorded '[^']*decoy-own\.raw'.*never followed/s);
    await expect(s.up({ ...spec, size: '4M', allowShrink: true })).rejects.toThrow(/decoy\.bin/);
    expect(md5(path.join(dir, 'decoy.qcow2'))).toBe(header);
    // Refresh records what the header says; destroy still removes only the file it created,
    // by its recorded path and identity.
    await s.refresh();
    expect(s.state!.outputs.dataFile).toBe(decoy);
    await s.destroy();
    expect(fs.existsSync(path.join(dir, 'decoy.qcow2'))).toBe(false);
    expect(fs.existsSync(path.join(dir, 'decoy-own.raw'))).toBe(false);
    expect(fs.statSync(decoy).size).toBe(1 << 20);
    expect(md5(decoy)).toBe(before);
  });

  it.skipIf(skip || !haveQemu)('destroy_keeps_a_data_file_replaced_since_it_was_created', async () => {
    const s = stack('swap');
    await s.up({ path: 'swap.qcow2', size: '1M', dataFile: 'swap.raw', engine });
    // Another file now stands at the recorded path (same name, another inode): it is not ours.
    fs.writeFileSync(path.join(dir, 'swap.new'), 'not the data file this resource created');
    fs.renameSync(path.join(dir, 'swap.new'), path.join(dir, 'swap.raw'));
    await s.destroy();
    expect(fs.readFileSync(path.join(dir, 'swap.raw'), 'utf8')).toBe('not the data file this resource created');
  });

  it.skipIf(skip || !haveQemu)('adopt_refuses_references_the_program_does_not_declare', async () => {
    const decoy = path.join(dir, 'adopt-decoy.bin');
    expect(qemu(['create', '-q', '-f', 'qcow2', '-o', `data_file=${decoy}`, 'evil.qcow2', '1M'], dir).status).toBe(0);
    fs.writeFileSync(decoy, crypto.randomBytes(1 << 20));
    const before = md5(decoy);
    expect(qemu(['create', '-q', '-f', 'qcow2', '-b', decoy, '-F', 'raw', 'evil-overlay.qcow2', '1M'], dir).status).toBe(0);
    await expect(stack('evil').up({ path: 'evil.qcow2', adopt: true, engine }))
      .rejects.toThrow(/names data file '[^']*adopt-decoy\.bin', which the program does not declare.*set dataFile/s);
    await expect(stack('evil-b').up({ path: 'evil-overlay.qcow2', adopt: true, engine }))
      .rejects.toThrow(/names backing file '[^']*adopt-decoy\.bin', which the program does not declare.*set backingFile/s);
    // Declared, the same image is adopted; destroy keeps it and its data file.
    const a = stack('evil-ok');
    await a.up({ path: 'evil.qcow2', dataFile: decoy, adopt: true, engine });
    await a.destroy();
    expect(md5(decoy)).toBe(before);
  });

  it.skipIf(skip)('refresh_of_a_missing_image_drops_it_from_state', async () => {
    const s = stack('gone');
    await s.up({ path: 'gone.qcow2', size: '1M', engine });
    fs.rmSync(path.join(dir, 'gone.qcow2'));
    await s.refresh();
    expect(s.state).toBeUndefined();
  });

  it.skipIf(skip)('an_upgrade_of_the_package_plans_no_update', async () => {
    const s = stack('ver');
    await s.up({ path: 'ver.qcow2', size: '1M', engine });
    // State written by an older version: every call runs the installed code, so nothing to do.
    s.state!.outputs = { ...s.state!.outputs, providerVersion: '0.0.0-old' };
    expect((await s.preview({ path: 'ver.qcow2', size: '1M', engine })).op).toBe('same');
    expect((await s.up({ path: 'ver.qcow2', size: '1M', engine })).op).toBe('same');
    // The next real change records the version that made it.
    const u = await s.up({ path: 'ver.qcow2', size: '2M', engine });
    expect(u).toMatchObject({ op: 'update', outputs: { providerVersion: impl.PROVIDER_VERSION } });
    await s.destroy();
  });

  it.skipIf(skip)('a_preview_sees_changes_made_by_hand_since_the_last_refresh_and_says_so', async () => {
    const s = stack('drift');
    const img = path.join(dir, 'drift.qcow2');
    const rawFile = path.join(dir, 'drift.raw');
    const inputs = { path: 'drift.qcow2', size: '64M', dataFile: rawFile, dataFileRaw: true, engine };
    await s.up(inputs);

    // Resized by hand (no refresh): keeping 64M would shrink it, refused with the program's way forward.
    expect(qemu(['resize', '-f', 'qcow2', img, '128M'], dir).status).toBe(0);
    await expect(s.preview(inputs)).rejects.toThrow(new RegExp(
      '^size: The image was resized outside the program: it is 134217728 bytes \\(128 MiB\\) now, 67108864 bytes \\(64 MiB\\) when last recorded\\. ' +
      'Shrinking .*Set size to the image\'s current size \\(134217728\\), or set allowShrink: true'));
    expect((await s.preview({ ...inputs, size: '128M' })).op).toBe('same');

    // data-file-raw cleared by hand: asking for it again is refused, saying what happened.
    expect(qemu(['amend', '-f', 'qcow2', '-o', 'data_file_raw=off', img], dir).status).toBe(0);
    await expect(s.preview({ ...inputs, size: '128M' })).rejects.toThrow(/data-file-raw was changed outside the program: it is off now, on when last recorded\. .*Set dataFileRaw: false/);

    // The data file renamed by hand: the old name is gone; the refusal offers the new one.
    const moved = path.join(dir, 'drift-moved.raw');
    expect(qemu(['amend', '-f', 'qcow2', '-o', `data_file=${moved}`, img], dir).status).toBe(0);
    fs.renameSync(rawFile, moved);
    await expect(s.preview({ ...inputs, size: '128M', dataFileRaw: false }))
      .rejects.toThrow(new RegExp(`data file name was changed outside the program: it is '${moved}' now, '${rawFile}' when last recorded.*keep dataFile at ${moved}`));
    expect((await s.preview({ ...inputs, size: '128M', dataFileRaw: false, dataFile: moved })).op).toBe('same');

    // Removed by hand.
    fs.renameSync(img, path.join(dir, 'drift-away.qcow2'));
    await expect(s.preview(inputs)).rejects.toThrow(/path: The image .*drift\.qcow2 is not there any more.*run a refresh/);
    fs.renameSync(path.join(dir, 'drift-away.qcow2'), img);
    await s.refresh();
    expect(s.state!.outputs).toMatchObject({ virtualSize: 128 << 20, dataFileRaw: false, dataFile: moved });
    await s.destroy();
  });

  it.skipIf(skip)('errors_cross_the_boundary_with_the_property_and_the_way_forward', async () => {
    const s = stack('err');
    const e = await s.up({ path: 'err.qcow2', dataFile: 'nothere.raw', adopt: true, engine }).catch((x) => x);
    expect(e).toBeInstanceOf(HostError);
    expect(String(e.message)).toMatch(/adopt: there is nothing to adopt.*Remove adopt/);
  });
});

describe.each(engines)('Image import from a source file (%s engine)', (engine) => {
  const skip = !haveQemu && (engine === 'qemu-img' || !requireQemu);
  it.skipIf(skip)('imports_a_sparse_raw_source_into_a_data_file_raw_image', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-import-'));
    // The qemu-img engine must really run qemu-img convert: a wrapper logs every invocation.
    const log = path.join(dir, 'qemu-img.log');
    const wrapper = path.join(dir, 'qemu-img-wrapper.sh');
    fs.writeFileSync(wrapper, `#!/bin/sh\nprintf '%s\\n' "$1" >> '${log}'\nexec qemu-img "$@"\n`, { mode: 0o755 });
    const saved = process.env.QEMU_IMG;
    process.env.QEMU_IMG = wrapper;
    const host = await ProviderHost.start(dir);
    if (saved === undefined) delete process.env.QEMU_IMG; else process.env.QEMU_IMG = saved;
    try {
      const src = path.join(dir, 'src.raw');
      fs.writeFileSync(src, crypto.randomBytes(256 << 10));
      fs.truncateSync(src, 4 << 20);
      const s = new Stack(host, await serializedProvider());
      // The rules refuse the same requests whichever engine imports.
      await expect(s.up({ path: 'bad.qcow2', source: 'src.raw', sourceFormat: 'raw', backingFile: 'src.raw', backingFormat: 'raw', engine }))
        .rejects.toThrow(/cannot also have a backing file/);
      await expect(s.up({ path: 'bad.qcow2', source: 'src.raw', sourceFormat: 'raw', size: '8M', engine }))
        .rejects.toThrow(/takes its size from the source/);
      const c = await s.up({ path: 'imported.qcow2', source: 'src.raw', sourceFormat: 'raw', dataFile: 'imported.raw', dataFileRaw: true, engine });
      expect(c.outputs).toMatchObject({ virtualSize: 4 << 20, dataFileRaw: true, engine });
      expect(qemu(['compare', '-f', 'raw', '-F', 'qcow2', 'src.raw', 'imported.qcow2'], dir).stdout).toMatch(/identical/);
      expect(qemu(['compare', '-f', 'raw', '-F', 'raw', 'src.raw', 'imported.raw'], dir).stdout).toMatch(/identical/);
      const ran = fs.existsSync(log) ? fs.readFileSync(log, 'utf8').split('\n') : [];
      if (engine === 'qemu-img') expect(ran).toContain('convert');
      else expect(ran).not.toContain('convert');
      expect(fs.readdirSync(dir).filter((f) => f.startsWith('.'))).toEqual([]); // no temp left behind
      await s.destroy();
      expect(fs.existsSync(src)).toBe(true);
    } finally {
      host.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('moving an image (native engine)', () => {
  it.skipIf(!haveQemu && !requireQemu)('a_new_path_is_a_replacement_only_with_allowReplace', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-move-'));
    const host = await ProviderHost.start(dir);
    try {
      const s = new Stack(host, await serializedProvider());
      await s.up({ path: 'one.qcow2', size: '1M' });
      await expect(s.preview({ path: 'two.qcow2', size: '1M' })).rejects.toThrow(/moving the image .* allowReplace: true/);
      const up = await s.up({ path: 'two.qcow2', size: '1M', allowReplace: true });
      expect(up.op).toBe('replace');
      expect(fs.existsSync(path.join(dir, 'one.qcow2'))).toBe(false);
      expect(fs.existsSync(path.join(dir, 'two.qcow2'))).toBe(true);
      await s.destroy();
    } finally {
      host.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
