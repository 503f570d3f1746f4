// Backing chains through Pulumi's real dynamic-provider host: a base replaced, rewritten by hand
// or deleted under its overlays is refused (at preview where the engine asks), for two- and
// three-level chains, wired as Image resources and as paths; the opt-in recreate path; and an
// in-place change of a base taken over by its overlays. After each step, `qemu-img compare`
// against a copy made before it shows whether a guest view changed.
//
// The engine's part is played as pulumi's step generator plays it: Check, Diff, then Create /
// Update / Delete; a delete-before-replace first asks every dependent's provider to Diff its
// stored inputs with the properties that depend on the replaced resource set to unknown
// (calculateDependentReplacements), deletes those that must be replaced, dependents first, and
// fails the deployment if one of those Diffs fails. In a preview, a resource being created,
// updated or replaced shows its inputs as outputs: an overlay wired to it sees the base's path
// and an unknown identity.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgAvailable, requireQemu } from '../helpers/qemu';
import { HostError, HostInScratch, ProviderHost, Stack, UNKNOWN, type Props } from './host';

const haveQemu = qemuImgAvailable() && spawnSync('qemu-io', ['--version']).status === 0;
if (!haveQemu && !requireQemu) console.warn('chains: qemu-img or qemu-io not installed; backing-chain tests are skipped');
const skip = !haveQemu && !requireQemu;

type Op = 'create' | 'update' | 'replace' | 'same';

describe('backing chains through the dynamic-provider host', () => {
  let dir: string;
  let host: ProviderHost;
  let provider: string;
  let copies = 0;

  const scratch = new HostInScratch('qcow2-chains-');
  beforeAll(async () => {
    if (skip) return;
    ({ dir, host, provider } = await scratch.start());
  }, 60_000);
  afterAll(() => scratch.stop());

  const at = (f: string) => path.join(dir, f);
  const run = (cmd: string, args: string[]) => {
    const r = spawnSync(cmd, args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const write = (file: string, pattern: number, offset: string, len = '1M') => run('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} ${offset} ${len}`, file]);
  /** A standalone copy of what the image's guest reads now. */
  const copyGuest = (file: string) => {
    const copy = at(`copy-${++copies}.qcow2`);
    run('qemu-img', ['convert', '-U', '-O', 'qcow2', file, copy]);
    return copy;
  };
  /** qemu-img compare: 0 identical, 1 different, 2 an image could not be opened. */
  const compare = (copy: string, file: string) => spawnSync('qemu-img', ['compare', '-U', copy, file], { encoding: 'utf8' }).status;

  const stack = (name: string) => new Stack(host, provider, `urn:pulumi:test::qcow2::pulumi-nodejs:dynamic/qcow2:Image::${name}`);
  const checked = async (s: Stack, news: Props) => {
    const c = await host.check(s.urn, s.state?.inputs ?? {}, { ...news, __provider: provider });
    if (c.failures.length) throw new HostError(c.failures.map((f) => `${f.property}: ${f.reason}`).join('\n'));
    return c.inputs;
  };

  /**
   * One resource's step, as the engine runs it. `dependents` are the images wired above it, in
   * dependency order (each to the one before it).
   */
  async function step(s: Stack, news: Props, dryRun: boolean, dependents: Stack[], dependentReplacements = true): Promise<{ op: Op; replaced: Stack[] }> {
    const inputs = await checked(s, news);
    if (!s.state) {
      if (!dryRun) {
        const r = await host.create(s.urn, inputs);
        s.state = { id: r.id, inputs, outputs: r.outs };
      }
      return { op: 'create', replaced: [] };
    }
    const d = await host.diff(s.urn, s.state.id, s.state.outputs, inputs);
    if (d.replaces.length) {
      const replaced: Stack[] = [];
      if (d.deleteBeforeReplace) {
        // calculateDependentReplacements: a failed Diff fails the deployment before anything is deleted.
        let below: Stack = s;
        for (const dep of dependentReplacements ? dependents : []) {
          if (!dep.state || (below !== s && !replaced.includes(below))) break;
          const unknownWiring = { ...dep.state.inputs, backingFile: UNKNOWN, backingIdentity: UNKNOWN, backingImageId: UNKNOWN };
          const dd = await host.diff(dep.urn, dep.state.id, dep.state.outputs, unknownWiring);
          if (!dd.replaces.length) break;
          replaced.push(dep);
          below = dep;
        }
        if (dryRun) return { op: 'replace', replaced };
        for (const dep of [...replaced].reverse()) {
          await host.delete(dep.urn, dep.state!.id, dep.state!.outputs);
          dep.state = undefined;
        }
        await host.delete(s.urn, s.state.id, s.state.outputs);
        const r = await host.create(s.urn, inputs);
        s.state = { id: r.id, inputs, outputs: r.outs };
        return { op: 'replace', replaced };
      }
      if (dryRun) return { op: 'replace', replaced };
      const old = s.state;
      const r = await host.create(s.urn, inputs);
      await host.delete(s.urn, old.id, old.outputs);
      s.state = { id: r.id, inputs, outputs: r.outs };
      return { op: 'replace', replaced };
    }
    if (d.changes === 'none') {
      s.state = { ...s.state, inputs };
      return { op: 'same', replaced: [] };
    }
    if (!dryRun) s.state = { id: s.state.id, inputs, outputs: await host.update(s.urn, s.state.id, s.state.outputs, inputs) };
    return { op: 'update', replaced: [] };
  }

  /** A program of images each built on the one before (`backingFile: <the Image below>`); `preview` or `up`. */
  async function deploy(layers: Array<{ s: Stack; inputs: Props }>, dryRun: boolean, dependentReplacements = true): Promise<Op[]> {
    const ops: Op[] = [];
    let wire: Props | undefined;
    const planned = new Set<Stack>();
    for (let i = 0; i < layers.length; i++) {
      const { s, inputs } = layers[i]!;
      const news = wire ? { ...inputs, ...wire, backingFormat: 'qcow2' } : inputs;
      let op: Op;
      if (dryRun && planned.has(s)) {
        op = 'replace'; // deleted with the base in the preview's plan; created anew
      } else {
        const r = await step(s, news, dryRun, layers.slice(i + 1).map((l) => l.s), dependentReplacements);
        op = r.op;
        for (const x of r.replaced) planned.add(x);
      }
      ops.push(op);
      // What the program hands the next image: the path output, and the identity (unknown in a
      // preview of a change: a dynamic provider's preview returns the inputs as outputs).
      // The id is kept in a preview of an update, not known in one of a create or replacement.
      const known = { backingFile: s.state?.outputs.path, backingIdentity: { identity: s.state?.outputs.identity, from: s.state?.outputs.identityFrom }, backingImageId: s.state?.id };
      wire = !dryRun || op === 'same' ? known
        : op === 'update' ? { ...known, backingFile: news.path, backingIdentity: UNKNOWN }
        : { backingFile: news.path, backingIdentity: UNKNOWN, backingImageId: UNKNOWN };
    }
    return ops;
  }
  const preview = (layers: Array<{ s: Stack; inputs: Props }>) => deploy(layers, true);
  const up = (layers: Array<{ s: Stack; inputs: Props }>) => deploy(layers, false);

  it.skipIf(skip)('records_the_identity_of_each_backing_file_at_create', async () => {
    const base = stack('id-base'), vm = stack('id-vm');
    await up([{ s: base, inputs: { path: 'id-base.qcow2', size: '64M' } }, { s: vm, inputs: { path: 'id-vm.qcow2' } }]);
    const chain = vm.state!.outputs.backingChain as Array<Record<string, unknown>>;
    const st = fs.statSync(at('id-base.qcow2'), { bigint: true });
    expect(chain).toEqual([expect.objectContaining({ path: at('id-base.qcow2'), dev: st.dev.toString(), ino: st.ino.toString(), size: Number(st.size) })]);
    expect(chain[0]!.header).toMatch(/^[0-9a-f]{32}$/);
    expect(Date.parse(String(chain[0]!.seen))).not.toBeNaN();
    expect(base.state!.outputs).toMatchObject({ backingChain: [], backingDrift: '', identityFrom: '' });
    expect(base.state!.outputs.identity).toMatch(/^sha256:[0-9a-f]{32}$/);
    // The image itself is as qemu-img makes it: the identity lives in the state only.
    const info = JSON.parse(run('qemu-img', ['info', '-U', '--output=json', at('id-vm.qcow2')]));
    expect(info['backing-filename']).toBe(at('id-base.qcow2'));
    expect(Object.keys(info['format-specific'].data)).not.toContain('identity');
    expect(await preview([{ s: base, inputs: { path: 'id-base.qcow2', size: '64M' } }, { s: vm, inputs: { path: 'id-vm.qcow2' } }])).toEqual(['same', 'same']);
  });

  it.skipIf(skip)('base_replaced_the_overlay_preview_refuses_and_the_opt_in_recreates_it', async () => {
    const base = stack('r-base'), vm = stack('r-vm');
    const program = (baseExtra: Props = {}, vmExtra: Props = {}) => [
      { s: base, inputs: { path: 'r-base.qcow2', size: '64M', ...baseExtra } },
      { s: vm, inputs: { path: 'r-vm.qcow2', ...vmExtra } },
    ];
    await up(program().slice(0, 1));
    write(at('r-base.qcow2'), 0x11, '0');
    await up(program());
    write(at('r-vm.qcow2'), 0x22, '4M');
    const copy = copyGuest(at('r-vm.qcow2'));

    // The base's cluster size changes (allowReplace on the base): a delete-before-replace. The
    // engine asks the overlay, whose backing file then depends on an image being replaced.
    const replaceBase = program({ clusterSize: 4096, allowReplace: true });
    const refused = await preview(replaceBase).catch((e: Error) => e);
    expect(refused).toBeInstanceOf(HostError);
    expect((refused as Error).message).toMatch(/The base of this image, .*r-base\.qcow2, is being replaced.*allowReplace: true on this image/s);
    // Without that question (an engine that skips it), the overlay's own step refuses: in the
    // preview the base's resource id is not known, as for every image being replaced.
    await expect(deploy(replaceBase, true, false)).rejects.toThrow(/r-base\.qcow2, is being replaced/);
    // ...and `up` stops at the same point, before anything is deleted.
    await expect(up(replaceBase)).rejects.toThrow(/is being replaced/);
    expect(compare(copy, at('r-vm.qcow2'))).toBe(0);
    // A new path for the base (a new image there, then the old one deleted): refused at the overlay's preview too.
    await expect(preview(program({ path: 'r-base2.qcow2', allowReplace: true }))).rejects.toThrow(/is being replaced by a new image at .*r-base2\.qcow2/);
    expect(fs.existsSync(at('r-base2.qcow2'))).toBe(false);
    expect(base.state!.outputs.clusterSize).toBe(65536);

    // Opting in: allowReplace on the overlay in an update of its own (state only), then the replacement.
    expect(await up(program({}, { allowReplace: true }))).toEqual(['same', 'same']);
    expect(compare(copy, at('r-vm.qcow2'))).toBe(0);
    expect(await preview(program({ clusterSize: 4096, allowReplace: true }, { allowReplace: true }))).toEqual(['replace', 'replace']);
    expect(compare(copy, at('r-vm.qcow2'))).toBe(0);
    expect(await up(program({ clusterSize: 4096, allowReplace: true }, { allowReplace: true }))).toEqual(['replace', 'create']);
    // Recreated on the new base, as asked: a new, empty overlay that records the new base.
    expect(base.state!.outputs.clusterSize).toBe(4096);
    expect(compare(copy, at('r-vm.qcow2'))).toBe(1);
    const empty = at('r-empty.qcow2');
    run('qemu-img', ['create', '-q', '-f', 'qcow2', empty, '64M']);
    expect(compare(empty, at('r-vm.qcow2'))).toBe(0);
    const chain = vm.state!.outputs.backingChain as Array<{ ino: string }>;
    expect(chain[0]!.ino).toBe(fs.statSync(at('r-base.qcow2'), { bigint: true }).ino.toString());
    expect(await preview(program({ clusterSize: 4096, allowReplace: true }, { allowReplace: true }))).toEqual(['same', 'same']);
  });

  it.skipIf(skip)('base_rewritten_by_hand_refresh_reports_drift_and_the_next_preview_refuses', async () => {
    const base = stack('h-base'), vm = stack('h-vm'), loose = stack('h-loose');
    const program = (vmExtra: Props = {}) => [{ s: base, inputs: { path: 'h-base.qcow2', size: '64M' } }, { s: vm, inputs: { path: 'h-vm.qcow2', ...vmExtra } }];
    await up(program().slice(0, 1));
    write(at('h-base.qcow2'), 0x33, '0');
    await up(program());
    // A second overlay given the base as a path, not wired.
    await loose.up({ path: 'h-loose.qcow2', backingFile: 'h-base.qcow2', backingFormat: 'qcow2' });
    write(at('h-vm.qcow2'), 0x44, '8M');
    const copies = { vm: copyGuest(at('h-vm.qcow2')), loose: copyGuest(at('h-loose.qcow2')) };
    const recorded = structuredClone(vm.state!.outputs.backingChain);

    // By hand, at the same path: qemu-img create truncates the base and writes a new one.
    run('qemu-img', ['create', '-q', '-f', 'qcow2', at('h-base.qcow2'), '64M']);
    expect(compare(copies.vm, at('h-vm.qcow2'))).toBe(1); // the guest view changed, by hand

    for (const s of [vm, loose]) {
      await s.refresh();
      expect(s.state!.outputs.backingDrift).toMatch(/its backing file .*h-base\.qcow2 was rewritten in place \(last seen .* as inode \d+ on device \d+, 1\d{6} bytes/);
    }
    // The refresh keeps what the overlays were built on: the difference stays.
    expect(vm.state!.outputs.backingChain).toEqual(recorded);
    await base.refresh();
    const refused = await preview(program()).catch((e: Error) => e);
    expect((refused as Error).message).toMatch(/backingFile: The backing chain of this image changed outside the program: its backing file .*h-base\.qcow2 was rewritten in place/);
    expect((refused as Error).message).toMatch(/restore the file.*acceptBacking: "sha256:[0-9a-f]{32}".*allowReplace: true/s);
    await expect(loose.preview({ path: 'h-loose.qcow2', backingFile: 'h-base.qcow2', backingFormat: 'qcow2' })).rejects.toThrow(/rewritten in place/);
    // A change of the overlay's own is refused too (a safe rebase would read the wrong base).
    await expect(loose.preview({ path: 'h-loose.qcow2', backingFile: 'h-base.qcow2', backingFormat: 'qcow2', size: '128M' })).rejects.toThrow(/rewritten in place/);

    // The user asserts the content is the same: acceptBacking with the digest the refusal names.
    const digest = /acceptBacking: "(sha256:[0-9a-f]{32})"/.exec((refused as Error).message)![1]!;
    const before = copyGuest(at('h-vm.qcow2'));
    expect(await preview(program({ acceptBacking: digest }))).toEqual(['same', 'update']);
    expect(await up(program({ acceptBacking: digest }))).toEqual(['same', 'update']);
    expect(compare(before, at('h-vm.qcow2'))).toBe(0);
    expect(vm.state!.outputs.backingChain).not.toEqual(recorded);
    expect(await preview(program({ acceptBacking: digest }))).toEqual(['same', 'same']);
    // The acceptance names that one chain: another rewrite is refused again.
    run('qemu-img', ['create', '-q', '-f', 'qcow2', at('h-base.qcow2'), '64M']);
    write(at('h-base.qcow2'), 0x34, '0');
    await base.refresh();
    await expect(preview(program({ acceptBacking: digest }))).rejects.toThrow(/changed outside the program/);
    // Or recreate the overlay with allowReplace.
    expect(await up(program({ allowReplace: true }))).toEqual(['same', 'replace']);
    expect(await preview(program({ allowReplace: true }))).toEqual(['same', 'same']);
  });

  it.skipIf(skip)('base_deleted_while_an_overlay_references_it_is_refused', async () => {
    const base = stack('d-base'), vm = stack('d-vm'), far = stack('d-far');
    await base.up({ path: 'd-base.qcow2', size: '64M' });
    write(at('d-base.qcow2'), 0x55, '0');
    await vm.up({ path: 'd-vm.qcow2', backingFile: 'd-base.qcow2', backingFormat: 'qcow2' });
    const copy = copyGuest(at('d-vm.qcow2'));
    // Destroying the base (paths as strings: Pulumi knows of no dependency): refused.
    await expect(base.destroy()).rejects.toThrow(/d-base\.qcow2 is the backing file of .*d-vm\.qcow2.*Nothing was deleted/s);
    expect(fs.existsSync(at('d-base.qcow2'))).toBe(true);
    expect(compare(copy, at('d-vm.qcow2'))).toBe(0);
    // Replacing it (delete before create, same path) deletes it first: refused the same way, before anything changes.
    await expect(base.up({ path: 'd-base.qcow2', size: '64M', clusterSize: 4096, allowReplace: true })).rejects.toThrow(/is the backing file of .*d-vm\.qcow2/);
    expect(base.state!.outputs.clusterSize).toBe(65536);
    expect(compare(copy, at('d-vm.qcow2'))).toBe(0);

    // An overlay in another folder: found among the images this provider has seen.
    fs.mkdirSync(at('far'));
    await vm.destroy();
    await far.up({ path: 'far/d-far.qcow2', backingFile: 'd-base.qcow2', backingFormat: 'qcow2' });
    const farCopy = copyGuest(at('far/d-far.qcow2'));
    await expect(base.destroy()).rejects.toThrow(/is the backing file of .*far\/d-far\.qcow2/);
    expect(compare(farCopy, at('far/d-far.qcow2'))).toBe(0);
    // With the overlay gone first, the base goes.
    await far.destroy();
    await base.destroy();
    expect(fs.existsSync(at('d-base.qcow2'))).toBe(false);
  });

  it.skipIf(skip)('base_deleted_by_hand_the_overlay_preview_refuses', async () => {
    const base = stack('m-base'), vm = stack('m-vm');
    await base.up({ path: 'm-base.qcow2', size: '64M' });
    await vm.up({ path: 'm-vm.qcow2', backingFile: 'm-base.qcow2', backingFormat: 'qcow2' });
    fs.renameSync(at('m-base.qcow2'), at('m-base.moved'));
    await expect(vm.preview({ path: 'm-vm.qcow2', backingFile: 'm-base.qcow2', backingFormat: 'qcow2' }))
      .rejects.toThrow(/its backing file .*m-base\.qcow2 is not there any more \(last seen .*\).*restore the file/s);
    await vm.refresh();
    expect(vm.state!.outputs.backingDrift).toMatch(/is not there any more/);
    // Moved back (the same file): nothing to refuse.
    fs.renameSync(at('m-base.moved'), at('m-base.qcow2'));
    expect((await vm.preview({ path: 'm-vm.qcow2', backingFile: 'm-base.qcow2', backingFormat: 'qcow2' })).op).toBe('same');
  });

  it.skipIf(skip)('three_level_chain_refuses_replacement_rewrite_and_deletion_at_every_level', async () => {
    const base = stack('t-base'), mid = stack('t-mid'), top = stack('t-top');
    const program = (baseExtra: Props = {}, allow = false) => [
      { s: base, inputs: { path: 't-base.qcow2', size: '64M', ...baseExtra } },
      { s: mid, inputs: { path: 't-mid.qcow2', ...(allow ? { allowReplace: true } : {}) } },
      { s: top, inputs: { path: 't-top.qcow2', ...(allow ? { allowReplace: true } : {}) } },
    ];
    // Each layer is filled before the next is built on it.
    await up(program().slice(0, 1));
    write(at('t-base.qcow2'), 0x66, '0');
    await up(program().slice(0, 2));
    write(at('t-mid.qcow2'), 0x77, '2M');
    await up(program());
    write(at('t-top.qcow2'), 0x78, '6M');
    const copies = { mid: copyGuest(at('t-mid.qcow2')), top: copyGuest(at('t-top.qcow2')) };

    // Replacement of the base: refused at the first overlay, nothing deleted.
    await expect(preview(program({ clusterSize: 4096, allowReplace: true }))).rejects.toThrow(/t-base\.qcow2, is being replaced/);
    await expect(up(program({ clusterSize: 4096, allowReplace: true }))).rejects.toThrow(/is being replaced/);
    expect(compare(copies.mid, at('t-mid.qcow2'))).toBe(0);
    expect(compare(copies.top, at('t-top.qcow2'))).toBe(0);

    // Deleting the base or the middle image by hand-written destroy: refused while used.
    await expect(base.destroy()).rejects.toThrow(/t-base\.qcow2 is the backing file of .*t-mid\.qcow2/);
    await expect(mid.destroy()).rejects.toThrow(/t-mid\.qcow2 is the backing file of .*t-top\.qcow2/);
    expect(compare(copies.top, at('t-top.qcow2'))).toBe(0);

    // The base rewritten by hand: both levels see it, the top one names the level.
    const saved = at('t-base.saved');
    fs.renameSync(at('t-base.qcow2'), saved);
    run('qemu-img', ['create', '-q', '-f', 'qcow2', at('t-base.qcow2'), '64M']);
    await top.refresh();
    expect(top.state!.outputs.backingDrift).toMatch(/t-base\.qcow2 \(the backing file of .*t-mid\.qcow2, level 2 of its chain\) was replaced by another file/);
    await base.refresh();
    await expect(preview(program())).rejects.toThrow(/its backing file .*t-base\.qcow2 was replaced by another file/);
    await expect(top.preview({ ...top.state!.inputs })).rejects.toThrow(/level 2 of its chain/);
    // Restored (the same file moved back): every preview passes again, no guest view changed.
    fs.rmSync(at('t-base.qcow2'));
    fs.renameSync(saved, at('t-base.qcow2'));
    await base.refresh();
    expect(await preview(program())).toEqual(['same', 'same', 'same']);
    expect(compare(copies.mid, at('t-mid.qcow2'))).toBe(0);
    expect(compare(copies.top, at('t-top.qcow2'))).toBe(0);

    // Opting in at both levels recreates them, top first, on the new base.
    expect(await up(program({}, true))).toEqual(['same', 'same', 'same']);
    expect(await up(program({ clusterSize: 4096, allowReplace: true }, true))).toEqual(['replace', 'create', 'create']);
    expect(base.state!.outputs.clusterSize).toBe(4096);
    expect((top.state!.outputs.backingChain as Array<{ path: string }>).map((l) => l.path)).toEqual([at('t-mid.qcow2'), at('t-base.qcow2')]);
    expect(await preview(program({ clusterSize: 4096, allowReplace: true }, true))).toEqual(['same', 'same', 'same']);
  });

  it.skipIf(skip)('the_qemu_img_engine_records_and_refuses_alike', async () => {
    const base = stack('q-base'), vm = stack('q-vm');
    const program = (vmExtra: Props = {}) => [
      { s: base, inputs: { path: 'q-base.qcow2', size: '64M', engine: 'qemu-img' } },
      { s: vm, inputs: { path: 'q-vm.qcow2', engine: 'qemu-img', ...vmExtra } },
    ];
    await up(program().slice(0, 1));
    write(at('q-base.qcow2'), 0x3c, '0');
    await up(program());
    const copy = copyGuest(at('q-vm.qcow2'));
    expect((vm.state!.outputs.backingChain as Array<{ path: string }>)[0]!.path).toBe(at('q-base.qcow2'));
    run('qemu-img', ['create', '-q', '-f', 'qcow2', at('q-base.qcow2'), '64M']);
    await base.refresh();
    const refused = await preview(program()).catch((e: Error) => e.message);
    expect(refused).toMatch(/its backing file .*q-base\.qcow2 was rewritten in place/);
    expect(compare(copy, at('q-vm.qcow2'))).toBe(1); // changed by hand, and reported
    expect(await up(program({ allowReplace: true }))).toEqual(['same', 'replace']);
    await expect(base.destroy()).rejects.toThrow(/is the backing file of/);
  });

  it.skipIf(skip)('an_in_place_change_of_a_wired_base_is_taken_over_and_keeps_the_guest_view', async () => {
    const base = stack('g-base'), mid = stack('g-mid'), top = stack('g-top'), loose = stack('g-loose');
    const program = (size: string) => [
      { s: base, inputs: { path: 'g-base.qcow2', size, lazyRefcounts: true } },
      { s: mid, inputs: { path: 'g-mid.qcow2', size: '64M' } },
      { s: top, inputs: { path: 'g-top.qcow2', size: '64M' } },
    ];
    await up(program('64M'));
    await loose.up({ path: 'g-loose.qcow2', backingFile: 'g-base.qcow2', backingFormat: 'qcow2', size: '64M' });
    write(at('g-top.qcow2'), 0x79, '0');
    const copy = copyGuest(at('g-top.qcow2'));
    // The base grows in place: the overlays' preview plans to record its new identity.
    expect(await preview(program('128M'))).toEqual(['update', 'update', 'update']);
    expect(await up(program('128M'))).toEqual(['update', 'update', 'update']);
    expect(base.state!.outputs.identityFrom).not.toBe('');
    expect(compare(copy, at('g-top.qcow2'))).toBe(0);
    expect(await preview(program('128M'))).toEqual(['same', 'same', 'same']);
    // An overlay given the base as a path cannot know the change came from this program: refused.
    await expect(loose.preview({ path: 'g-loose.qcow2', backingFile: 'g-base.qcow2', backingFormat: 'qcow2', size: '64M' })).rejects.toThrow(/rewritten in place/);
  });
});
