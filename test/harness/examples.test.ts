// Every example, and the root Pulumi.yaml's quick start, run as a user runs them: a fresh copy
// of the project with the packed tarball installed, driven through the language-host harness
// (test/harness/engine.ts) with the shipped policy pack on every preview and up, in its default
// configuration (one pack process serves the whole file; the CLI would start it per run). Each
// goes through preview, up, a change, up again, a refresh after a hand-run `qemu-img resize`, and
// a destroy from a moved copy of the project; the state never names the project's folder. The
// four projects are independent and run side by side; the steps of each run in order.

import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, it, type ExpectStatic } from 'vitest';
import { qemuImgAvailable, requireQemu, runQemuImg } from '../helpers/qemu';
import { PolicyPack, Project, type RunResult } from './engine';
import { HANG_MS, examplesInstall, policyInstall, projectCopy, runDir } from './install';

const repo = path.resolve(__dirname, '../..');
const examples = path.join(repo, 'examples');
const drift = qemuImgAvailable() || requireQemu;
if (!drift) console.warn('[examples] qemu-img not installed: the hand-run `qemu-img resize` steps are skipped (set REQUIRE_QEMU=1 to make this fail)');

const md5 = (f: string) => crypto.createHash('md5').update(fs.readFileSync(f)).digest('hex');
const GiB = 2 ** 30;

/** The shipped policy pack, from its own install, in its default configuration: on every preview and up. */
let pack: PolicyPack;

/** Two projects at a time: each run keeps about a core busy (program, provider host), and there may be only two. */
const slots = { free: 2, waiting: [] as Array<() => void> };
async function inSlot<T>(work: () => Promise<T>): Promise<T> {
  if (slots.free === 0) await new Promise<void>((resolve) => slots.waiting.push(resolve));
  else slots.free--;
  try {
    return await work();
  } finally {
    const next = slots.waiting.shift();
    if (next) next();
    else slots.free++;
  }
}

/** One example's project, its images (outside the project) and state across the steps. */
class Example {
  readonly work: string;
  readonly images: string;
  readonly stateFile: string;
  project!: Project;
  config: Record<string, unknown>;

  /** `expect` is the test's own: the examples run concurrently. */
  constructor(readonly expect: ExpectStatic, readonly name: string, config: (images: string) => Record<string, unknown>) {
    this.work = fs.mkdtempSync(path.join(runDir(), `example-${name}-`));
    this.images = path.join(this.work, 'images');
    fs.mkdirSync(this.images);
    this.stateFile = path.join(this.work, 'state.json');
    this.config = config(this.images);
  }

  /** A fresh copy of the example (`source` builds its files) with the tarball installed. */
  async create(source: (dest: string) => void): Promise<void> {
    const src = path.join(this.work, 'source');
    fs.mkdirSync(src);
    source(src);
    this.project = this.at(await projectCopy(src, path.join(this.work, 'project'), await examplesInstall()));
  }

  /**
   * The project at `dir`. Its first run type-checks the program, as `pulumi` does; later runs
   * set PULUMI_NODEJS_TRANSPILE_ONLY (a setting the nodejs language host honours too) to keep the
   * suite short: the program has not changed.
   */
  at(dir: string): Project {
    const env: Record<string, string> = this.project ? { PULUMI_NODEJS_TRANSPILE_ONLY: 'true' } : {};
    return new Project({ dir, stateFile: this.stateFile, config: this.config, policyPacks: [pack], env });
  }

  set(config: Record<string, unknown>): void {
    Object.assign(this.config, config);
    this.project = this.at(this.project.dir);
  }

  /** A run that must succeed: no errors and no policy violation of any level. */
  clean(r: RunResult): RunResult {
    this.expect(r.errors, `${r.stderr}\n${r.stdout}`).toEqual([]);
    this.expect(r.policy).toEqual([]);
    return r;
  }

  /** `qemu-img resize`, by hand, outside the program. */
  resize(file: string, size: string, shrink = false): void {
    const r = runQemuImg(['resize', ...(shrink ? ['--shrink'] : []), '-f', 'qcow2', path.join(this.images, file), size]);
    this.expect(r.status, r.stderr).toBe(0);
  }

  /** Move the project folder (another clone, another CI runner) and destroy from there. */
  async destroyFromMovedCopy(): Promise<RunResult> {
    const moved = path.join(this.work, 'moved');
    const before = this.project.dir;
    fs.renameSync(before, moved);
    this.project = this.at(moved);
    const state = fs.readFileSync(this.stateFile, 'utf8');
    for (const p of [before, moved, repo]) this.expect(state).not.toContain(p);
    const r = this.clean(await this.project.destroy());
    this.expect(this.project.readState().resources).toEqual([]);
    return r;
  }

  remove(): void {
    fs.rmSync(this.work, { recursive: true, force: true });
  }
}

const copyExample = (name: string) => (dest: string) => fs.cpSync(path.join(examples, name), dest, {
  recursive: true, filter: (s) => !s.split(path.sep).includes('node_modules'),
});

beforeAll(async () => {
  // The installs take a while: side by side, and here, out of the first test's time.
  const [, policy] = await Promise.all([examplesInstall(), policyInstall()]);
  pack = await PolicyPack.start(policy);
}, HANG_MS);
afterAll(() => pack?.stop());

describe.concurrent('examples, each in a fresh project with the packed package installed', () => {
  it('the root Pulumi.yaml (main: examples/quickstart): preview, up, a change, up; a hand-run resize seen by refresh and refused to shrink back; destroy from a moved copy', ({ expect }) => inSlot(async () => {
    const ex = new Example(expect, 'root', (images) => ({ imageDir: images, baseSize: '2G', dataSize: '1G' }));
    await ex.create((dest) => {
      fs.copyFileSync(path.join(repo, 'Pulumi.yaml'), path.join(dest, 'Pulumi.yaml'));
      copyExample('quickstart')(path.join(dest, 'examples', 'quickstart'));
    });
    expect(ex.project.programDir).toBe(path.join(ex.project.dir, 'examples', 'quickstart'));
    const preview = ex.clean(await ex.project.preview());
    expect(preview.ops).toEqual({ base: 'create', vm1: 'create', vm2: 'create', data: 'create' });
    expect(fs.readdirSync(ex.images)).toEqual([]);

    const up = ex.clean(await ex.project.up());
    expect(up.ops).toEqual({ base: 'create', vm1: 'create', vm2: 'create', data: 'create' });
    expect(fs.readdirSync(ex.images).sort()).toEqual(['base.qcow2', 'data.qcow2', 'data.raw', 'vm1.qcow2', 'vm2.qcow2']);
    expect(up.outputs).toMatchObject({ dataVirtualSize: GiB, dataFile: path.join(ex.images, 'data.raw') });

    ex.set({ dataSize: '2G' });
    const grown = ex.clean(await ex.project.up());
    // Only the changed image is updated; the others have no input change and nothing to do.
    expect(grown.ops).toEqual({ base: 'same', vm1: 'same', vm2: 'same', data: 'update' });
    expect(grown.outputs.dataVirtualSize).toBe(2 * GiB);
    expect(fs.statSync(path.join(ex.images, 'data.raw')).size).toBe(2 * GiB);

    if (drift) {
      ex.resize('base.qcow2', '3G');
      const refresh = ex.clean(await ex.project.refresh());
      // The overlays' base changed under them, outside the program: the refresh reports it.
      expect(refresh.ops).toEqual({ base: 'update', vm1: 'update', vm2: 'update', data: 'same' });
      const refused = await ex.project.preview();
      expect(refused.ok).toBe(false);
      expect(refused.errors.join('\n')).toContain(
        "size: Shrinking the image from 3221225472 bytes (3 GiB) to 2147483648 bytes (2 GiB) deletes all data beyond the new end. " +
          "Set size to the image's current size (3221225472), or set allowShrink: true to shrink it");
      ex.set({ baseSize: '3G' });
      // The base is accepted as it is; its overlays still refuse until the user restores, accepts or recreates them.
      const overlays = await ex.project.preview();
      expect(overlays.ok).toBe(false);
      expect(overlays.errors.join('\n')).toMatch(/backingFile: The backing chain of this image changed outside the program: its backing file .*base\.qcow2 was rewritten in place.*acceptBacking: "sha256:/s);
    }

    const destroyed = await ex.destroyFromMovedCopy();
    expect(Object.keys(destroyed.ops).sort()).toEqual(['base', 'data', 'vm1', 'vm2']);
    expect(fs.readdirSync(ex.images)).toEqual([]);
    ex.remove();
  }), HANG_MS);

  it('examples/overlays: preview, up, one overlay grows; a hand-shrunk overlay seen by refresh and grown back, a VM dropped from config deleted; destroy from a moved copy', ({ expect }) => inSlot(async () => {
    const ex = new Example(expect, 'overlays', (images) => ({ imageDir: images, goldenSize: '1G', vms: { web: '1G', db: '1G' } }));
    await ex.create(copyExample('overlays'));
    expect(ex.clean(await ex.project.preview()).ops).toEqual({ golden: 'create', 'overlay-web': 'create', 'overlay-db': 'create' });
    ex.clean(await ex.project.up());
    expect(fs.readdirSync(ex.images).sort()).toEqual(['db.qcow2', 'golden.qcow2', 'web.qcow2']);
    // backingFile: golden wires each overlay to the golden image's identity and id; each records its chain.
    const byName = (state: ReturnType<typeof ex.project.readState>, name: string) => state.resources.find((r) => r.urn.endsWith(`::${name}`))!;
    const state = ex.project.readState();
    const golden = byName(state, 'golden');
    for (const vm of ['web', 'db']) {
      const overlay = byName(state, `overlay-${vm}`);
      expect(overlay.inputs).toMatchObject({ backingFile: path.join(ex.images, 'golden.qcow2'), backingIdentity: { identity: golden.outputs.identity, from: '' }, backingImageId: golden.id });
      expect(overlay.dependencies).toContain(golden.urn);
      expect((overlay.outputs.backingChain as Array<{ path: string }>).map((l) => l.path)).toEqual([path.join(ex.images, 'golden.qcow2')]);
    }
    ex.set({ vms: { web: '1G', db: '2G' } });
    const grown = ex.clean(await ex.project.up());
    expect(grown.ops).toEqual({ golden: 'same', 'overlay-web': 'same', 'overlay-db': 'update' });
    expect((grown.outputs.overlays as Array<{ vm: string; virtualSize: number }>).find((o) => o.vm === 'db')!.virtualSize).toBe(2 * GiB);

    // A new golden image (another cluster size, allowReplace on it): the overlays refuse at preview.
    const sums = Object.fromEntries(['golden.qcow2', 'web.qcow2', 'db.qcow2'].map((f) => [f, md5(path.join(ex.images, f))]));
    ex.set({ goldenClusterSize: 4096 });
    const replaced = await ex.project.preview();
    expect(replaced.ok).toBe(false);
    expect(replaced.errors.join('\n')).toMatch(/The base of this image, .*golden\.qcow2, is being replaced/);
    const refusedUp = await ex.project.up();
    expect(refusedUp.ok).toBe(false);
    for (const [f, sum] of Object.entries(sums)) expect(md5(path.join(ex.images, f)), f).toBe(sum);
    delete ex.config.goldenClusterSize;
    ex.set({});

    if (drift) {
      ex.resize('web.qcow2', '512M', true);
      expect(ex.clean(await ex.project.refresh()).ops).toEqual({ golden: 'same', 'overlay-web': 'update', 'overlay-db': 'same' });
      ex.set({ vms: { web: '1G' } });
      const back = ex.clean(await ex.project.up());
      expect(back.ops).toEqual({ golden: 'same', 'overlay-web': 'update', 'overlay-db': 'delete' });
      expect(back.outputs.overlays).toEqual([{ vm: 'web', path: path.join(ex.images, 'web.qcow2'), virtualSize: GiB }]);
      expect(fs.readdirSync(ex.images).sort()).toEqual(['golden.qcow2', 'web.qcow2']);
    }

    await ex.destroyFromMovedCopy();
    expect(fs.readdirSync(ex.images)).toEqual([]);
    ex.remove();
  }), HANG_MS);

  it('examples/raw-data-file: wraps a raw disk unchanged with a bitmap, clears data-file-raw, refuses to set it again; a guest write tracked by the bitmap; a hand-run resize seen by refresh; destroy from a moved copy keeps the raw disk', ({ expect }) => inSlot(async () => {
    const ex = new Example(expect, 'raw-data-file', (images) => ({ imageDir: images, rawDisk: path.join(images, 'disk.raw') }));
    const disk = path.join(ex.images, 'disk.raw');
    fs.writeFileSync(disk, crypto.randomBytes(1 << 20));
    fs.truncateSync(disk, 16 << 20);
    let sum = md5(disk);
    await ex.create(copyExample('raw-data-file'));
    expect(ex.clean(await ex.project.preview()).ops).toEqual({ disk: 'create' });
    const up = ex.clean(await ex.project.up());
    expect(up.outputs).toMatchObject({ dataFile: disk, dataFileRaw: true, virtualSize: 16 << 20 });
    expect(up.outputs.bitmaps).toEqual([{ name: 'backup', granularity: 65536, flags: ['auto'], inconsistent: false }]);
    expect(md5(disk)).toBe(sum);

    ex.set({ dataFileRaw: 'false' });
    const off = await ex.project.up();
    expect(off.errors).toEqual([]);
    expect(off.ops).toEqual({ disk: 'update' });
    expect(off.outputs.dataFileRaw).toBe(false);
    // The pack's advice, not a refusal: a data file without data-file-raw.
    expect(off.policy.map((p) => [p.policy, p.level])).toEqual([['qcow2-prefer-data-file-raw', 'advisory']]);

    ex.set({ dataFileRaw: 'true' });
    const refused = await ex.project.preview();
    expect(refused.ok).toBe(false);
    expect(refused.errors.join('\n')).toMatch(/data-file-raw cannot be set on existing images/);
    expect(md5(disk)).toBe(sum);
    ex.set({ dataFileRaw: 'false' });

    if (drift) {
      // A guest writes (qemu-io, as a VM would); the bitmap says where; cleared after the "backup".
      const qcow2 = path.join(ex.images, 'disk.qcow2');
      const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(repo, 'dist/provider/cli/main.js'), ...args], { encoding: 'utf8' });
      expect(spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -q -P 7 1M 64k', qcow2], { encoding: 'utf8' }).status).toBe(0);
      expect(cli('bitmap', '--dump', '--output=json', qcow2, 'backup').stdout).toBe('[{ "start": 1048576, "length": 65536, "dirty": true }]\n');
      expect(cli('bitmap', '--clear', qcow2, 'backup').status).toBe(0);
      expect(cli('bitmap', '--dump', '--output=json', qcow2, 'backup').stdout).toBe('[]\n');
      sum = md5(disk); // the guest's write is in the raw disk
    }

    if (drift) {
      ex.resize('disk.qcow2', '32M');
      const refresh = await ex.project.refresh();
      expect(refresh.errors).toEqual([]);
      expect(refresh.ops).toEqual({ disk: 'update' });
      expect(ex.project.readState().resources.find((r) => r.urn.endsWith('::disk'))!.outputs.virtualSize).toBe(32 << 20);
      // The program names no size (the adopted file's size was the image's): nothing to do.
      expect((await ex.project.preview()).ops).toEqual({ disk: 'same' });
      sum = md5(disk);
    }

    await ex.destroyFromMovedCopy();
    expect(fs.readdirSync(ex.images)).toEqual(['disk.raw']);
    expect(md5(disk)).toBe(sum); // the user's raw disk is never deleted
    ex.remove();
  }), HANG_MS);

  it('examples/gitops: previews the stack file as shipped, rejects a bad one, up, a change, up; a hand-grown image refused by the next preview, recorded by refresh; destroy from a moved copy', ({ expect }) => inSlot(async () => {
    const ex = new Example(expect, 'gitops', () => ({}));
    await ex.create(copyExample('gitops'));
    // Pulumi.dev.yaml as shipped: schema-valid, passes the policy pack; a preview creates nothing.
    const shipped = ex.clean(await ex.project.preview());
    expect(shipped.ops).toEqual({ base: 'create', scratch: 'create' });
    expect(shipped.outputs.images).toMatchObject({ base: { path: '/var/lib/libvirt/images/base.qcow2' } });

    ex.set({ images: { bad: { path: 'x.qcow2', size: 'lots', clusterSize: 3 } } });
    const bad = await ex.project.up();
    expect(bad.ok).toBe(false);
    expect(bad.errors.join('\n')).toMatch(/images\.bad\.(size|clusterSize)/);
    expect(ex.project.readState().resources.filter((r) => r.custom)).toEqual([]);

    const declared = {
      base: { path: path.join(ex.images, 'base.qcow2'), size: '1G' },
      scratch: { path: path.join(ex.images, 'scratch.qcow2'), size: '1G', dataFile: path.join(ex.images, 'scratch.raw'), dataFileRaw: true },
    };
    ex.set({ images: declared });
    expect(ex.clean(await ex.project.up()).ops).toEqual({ base: 'create', scratch: 'create' });
    ex.set({ images: { ...declared, base: { ...declared.base, size: '2G' } } });
    expect(ex.clean(await ex.project.preview()).ops).toEqual({ base: 'update', scratch: 'same' });
    expect(ex.clean(await ex.project.up()).ops).toEqual({ base: 'update', scratch: 'same' });

    if (drift) {
      ex.resize('scratch.qcow2', '2G');
      expect(fs.statSync(path.join(ex.images, 'scratch.raw')).size).toBe(2 * GiB);
      const refused = await ex.project.preview();
      expect(refused.ok).toBe(false);
      expect(refused.errors.join('\n')).toMatch(new RegExp(
        '^size: The image was resized outside the program: it is 2147483648 bytes \\(2 GiB\\) now, 1073741824 bytes \\(1 GiB\\) when last recorded\\. ' +
        ".*Set size to the image's current size \\(2147483648\\), or set allowShrink: true", 'm'));
      expect(ex.clean(await ex.project.refresh()).ops).toEqual({ base: 'same', scratch: 'update' });
    }

    await ex.destroyFromMovedCopy();
    expect(fs.readdirSync(ex.images)).toEqual([]);
    ex.remove();
  }), HANG_MS);
});
