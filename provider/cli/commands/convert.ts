// `qcow2 convert [-p] [-q] [--bitmaps] [-f raw|qcow2] [-l SNAPSHOT] -O qcow2 [-o OPTIONS] SRC DST`: import a raw or qcow2
// image (read through its backing chain) into a new image, sparse-aware; never overwrites.

import { imageName, requireCreatable } from '../args';
import { CommandSpec, parseCommand } from '../commander';
import { engineFor, importSource } from '../engine';
import { createOptionsHelp, hasHelpOption, mergeOptionLists, parseOptionList, toCreateOptions } from '../optlist';
import { Exit, fail, messageOf, openPrefix, report, reportEach, warn } from '../report';
import type { CreateOptions } from '../../model/options';
import type { ImportSource, SnapshotSelector } from '../../engines/engine';
import type { OptionPair } from '../optlist';
import { out } from '../io';
import { qemuProgress } from '../render/progress';

export const usage = 'convert [-p] [-q] [--bitmaps [--skip-broken-bitmaps]] [-f raw|qcow2] [-l SNAPSHOT] -O qcow2 [-o OPTIONS] SRC DST';
export const description = 'import a raw or qcow2 image (read through its backing chain) into a new qcow2 image; never overwrites';

interface Opts { f?: string; O?: string; o: string[]; p?: boolean; q?: boolean; c?: boolean; bitmaps?: boolean; skipBrokenBitmaps?: boolean; l?: string }

const spec: CommandSpec = {
  name: 'convert', usage, description, args: ['[src]', '[dst]'],
  options: [
    ['-f <fmt>', 'source format: raw or qcow2 (probed when omitted)'],
    ['-O <fmt>', 'output format (qcow2)'],
    ['-o <options>', 'create options of the new image (repeatable); its size comes from the source', 'repeatable'],
    ['-p', 'show a progress bar'],
    ['-q', 'quiet'],
    ['-c', 'compress the output (not supported: refused)'],
    ['--bitmaps', "copy the source's persistent dirty bitmaps"],
    ['--skip-broken-bitmaps', 'with --bitmaps: leave inconsistent bitmaps out instead of failing'],
    ['-l <snapshot>', 'read an internal snapshot (id or name, or snapshot.id=ID,snapshot.name=NAME) instead of the current state'],
  ],
};

export async function run(argv: string[]): Promise<void> {
  const parsed = parseCommand<Opts>(spec, argv);
  if (parsed === undefined) return;
  const { args: [src, dst], o } = parsed;
  const snapshot = o.l === undefined ? undefined : snapshotSelector(o.l);
  let options: CreateOptions;
  try {
    const pairs = o.o.length ? parseOptionList(mergeOptionLists(o.o)) : [];
    if (hasHelpOption(pairs)) {
      // qemu-img: without -O the output format is raw; with both file names the protocol's options are listed too.
      const fmt = o.O ?? 'raw';
      requireCreatable(fmt);
      out(createOptionsHelp(fmt as 'qcow2' | 'raw', src !== undefined && dst !== undefined));
      return;
    }
    options = toCreateOptions(pairs, undefined, { onWarning: warn });
  } catch (e) {
    if (e instanceof Exit) throw e;
    reportEach(messageOf(e));
    throw new Exit(1);
  }
  if (src === undefined || dst === undefined) fail('Expecting image file name');
  if (o.O !== undefined && o.O !== 'qcow2') fail(`Unknown output format '${o.O}': this tool writes qcow2 images only (-O qcow2)`);
  if (o.c) fail('Compressed output (-c) is not supported by the native engine; use qemu-img convert -c');
  // Loaded only for -p: the bar library is not needed otherwise.
  const from = imageName(src);
  const format = o.f ?? from.format;
  const target = imageName(dst);
  if (o.skipBrokenBitmaps && !o.bitmaps) fail('--skip-broken-bitmaps can only be used with --bitmaps');
  // qemu-img's `    (NN.NN/100%)` lines, except on a terminal, where a bar is drawn instead.
  const bar = o.p && !o.q ? (process.stdout.isTTY ? progressBar() : qemuLines()) : undefined;
  try {
    const source: ImportSource = { ...importSource(from, target, format), ...(snapshot ? { snapshot } : {}) };
    await engineFor(target, from).import(target.path, options, source, {
      ...(bar ? { progress: bar.update } : {}),
      ...(o.bitmaps ? { bitmaps: true, skipBrokenBitmaps: o.skipBrokenBitmaps ?? false } : {}),
    });
  } catch (e) {
    bar?.stop();
    // qemu-img opens the source, then loads the snapshot: its failure is not an open error.
    report((/^Failed to load snapshot: /.test(messageOf(e)) ? '' : openPrefix(e, src)) + messageOf(e));
    throw new Exit(1);
  }
  bar?.stop();
}

/** -l as qemu-img's img_convert reads it: `snapshot.id=...,snapshot.name=...` (QemuOpts), else an id or name. */
function snapshotSelector(text: string): SnapshotSelector {
  if (!text.startsWith('snapshot.')) return { idOrName: text };
  const sel: { id?: string; name?: string } = {};
  let pairs: OptionPair[];
  try {
    pairs = parseOptionList(text);
  } catch (e) {
    reportEach(messageOf(e));
    fail(`Failed in parsing snapshot param '${text}'`);
  }
  for (const [key, value = 'on'] of pairs) {
    if (key !== 'snapshot.id' && key !== 'snapshot.name') {
      report(`Invalid parameter '${key}'`);
      fail(`Failed in parsing snapshot param '${text}'`);
    }
    if (key === 'snapshot.id') sel.id = value; else sel.name = value;
  }
  return sel;
}

function qemuLines(): { update(done: number, total: number): void; stop(): void } {
  const p = qemuProgress();
  return {
    update: (done, total) => p.update(total ? (done * 100) / total : 100),
    stop: () => p.end(),
  };
}

function progressBar(): { update(done: number, total: number): void; stop(): void } {
  const cliProgress = require('cli-progress') as typeof import('cli-progress');
  const bar = new cliProgress.SingleBar({ format: '    [{bar}] {percentage}% | {value}/{total} MiB', hideCursor: true, clearOnComplete: false }, cliProgress.Presets.shades_classic);
  const mib = (n: number) => Math.round(n / 1048576);
  let started = false;
  return {
    update: (done, total) => {
      if (!started) { bar.start(mib(total), 0); started = true; }
      bar.update(mib(done));
    },
    stop: () => { if (started) bar.stop(); },
  };
}
