// `qcow2 convert [-c] [-p] [-q] [-t CACHE] [--checksum ALG:HEX] [--bitmaps] [-f raw|qcow2] [-l SNAPSHOT]
// [-B BACKING -F FMT] [-n] [-O raw|qcow2] [-o OPTIONS] [-S SIZE] SRC [SRC2 ...] DST`: import a raw or qcow2 image (read through its backing chain),
// or an http(s) URL (downloaded through the cache and verified against --checksum), or several
// files one after another, into a new image, sparse as -S says, compressed with -c; never
// overwrites (-n writes into an existing image the user names instead). gzip/xz/zstd-compressed sources are decompressed. A
// local source's backing and data file names are followed as qemu-img follows them; a
// downloaded image may name none.

import { imageName, requireCreatable } from '../args';
import { CommandSpec, parseCommand } from '../commander';
import { engineFor, importSource } from '../engine';
import type { ImageName } from '../names';
import { createOptionsHelp, hasHelpOption, mergeOptionLists, parseOptionList, toCreateOptions } from '../optlist';
import { Exit, fail, messageOf, openPrefix, report, reportEach, warn } from '../report';
import type { CreateOptions } from '../../model/options';
import type { ImportOptions, ImportSource, SnapshotSelector } from '../../engines/engine';
import type { OptionPair } from '../optlist';
import { isTerminal, out } from '../io';
import { qemuProgress } from '../render/progress';
import { redactUrl } from '../../transport/http/url';
import { parseSize } from '../../model/size';
import { Qcow2Error } from '../../model/errors';
import { resolve } from 'path';
import { bitmapStates, skippedBitmapWarnings } from '../../rules/bitmaps';

export const usage = 'convert [-c] [-p] [-q] [-C] [-t CACHE] [--checksum ALG:HEX] [--bitmaps [--skip-broken-bitmaps]] [-f raw|qcow2] [-l SNAPSHOT] [-B BACKING -F FMT] [-n] [-O raw|qcow2] [-o OPTIONS] [-S SIZE] SRC|URL [SRC2 ...] DST';
export const description = 'import a raw or qcow2 image (read through its backing chain), an http(s) URL (verified by --checksum), or several files one after another, into a new raw (default) or qcow2 image; never overwrites';

interface Opts {
  f?: string; O?: string; o: string[]; p?: boolean; q?: boolean; c?: boolean; t?: string; checksum?: string; bitmaps?: boolean; skipBrokenBitmaps?: boolean;
  l?: string; B?: string; F?: string; n?: boolean; C?: boolean; S?: string; salvage?: boolean;
}

/** qemu-img's cache modes; every one but unsafe flushes the new image before it appears. */
const CACHE_MODES = ['none', 'writeback', 'unsafe', 'directsync', 'writethrough'];

const spec: CommandSpec = {
  name: 'convert', usage, description, args: ['[files...]'],
  options: [
    ['-f <fmt>', 'source format: raw or qcow2 (detected by content when omitted)'],
    ['-O <fmt>', 'output format: raw (the default, as in qemu-img: a sparse raw file) or qcow2'],
    ['-o <options>', 'create options of the new image (repeatable); its size comes from the source', 'repeatable'],
    ['-p', 'show progress, as qemu-img does: (x/100%) on standard output'],
    ['-q', 'quiet'],
    ['-t <cache>', 'cache mode of the new image: unsafe (default, as qemu-img: no flush before it appears), writeback, none, directsync, writethrough (flushed)'],
    ['--checksum <alg:hex>', 'sha256:<hex> or sha512:<hex> of the source: required for a URL, verified for a file'],
    ['-c', 'compress the output: each cluster with the image\'s compression_type (zlib, or zstd with -o compression_type=zstd), as qemu-img does, on every core'],
    ['--bitmaps', "copy the source's persistent dirty bitmaps"],
    ['--skip-broken-bitmaps', 'with --bitmaps: leave inconsistent bitmaps out instead of failing'],
    ['-l <snapshot>', 'read an internal snapshot (id or name, or snapshot.id=ID,snapshot.name=NAME) instead of the current state'],
    ['-B <backing>', 'make the new image an overlay of BACKING (as -o backing_file=): only what the source holds above its own backing file is copied; BACKING must hold the rest (with -n: only that is written into DST)'],
    ['-F <fmt>', "format of -B's backing file (qcow2 or raw; required, as -o backing_fmt=)"],
    ['-n', 'write into DST, an existing qcow2 image at least as large as the source (its options and backing file kept), instead of creating it; not with -c or -o'],
    ['-C', "copy offloading: accepted (data in local files is always copied with copy_file_range where the kernel allows; qemu-img's conflicts with -c, -S and --salvage are refused in its words)"],
    ['-S <size>', 'minimum sparse size (default 4k): zero runs at least this long are left unwritten (holes, unallocated clusters), shorter ones written with the data around them, as qemu-img splits its writes; a multiple of 512 up to 16M; 0 writes everything (every cluster allocated, zeros too)'],
    ['--salvage', 'continue past read errors: not supported (refused), except for qemu-img\'s conflict with -C'],
  ],
};

export async function run(argv: string[]): Promise<void> {
  const parsed = parseCommand<Opts>(spec, argv);
  if (parsed === undefined) return;
  const { o } = parsed;
  const files = (parsed.args[0] as unknown as string[] | undefined) ?? [];
  // qemu-img: every file name but the last is a source, read one after another.
  const sources = files.slice(0, -1);
  const src = sources[0];
  const dst = files.length >= 2 ? files[files.length - 1] : undefined;
  let sparse: number | undefined;
  if (o.S !== undefined) {
    let bytes: bigint;
    try {
      bytes = parseSize(o.S, { name: 'buffer size for sparse output' });
    } catch (e) {
      reportEach(messageOf(e));
      throw new Exit(1);
    }
    if (bytes % 512n !== 0n || bytes > 16n << 20n) {
      fail('Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).');
    }
    sparse = Number(bytes);
  }
  const snapshot = o.l === undefined ? undefined : snapshotSelector(o.l);
  // qemu-img's order: these conflicts before anything else is looked at.
  if (o.skipBrokenBitmaps && !o.bitmaps) fail('Use of --skip-broken-bitmaps requires --bitmaps');
  if (o.c && o.C) fail('Cannot enable copy offloading when -c is used');
  if (o.S !== undefined && o.C) fail('Cannot enable copy offloading when -S is used');
  if (o.C && o.salvage) fail('Cannot use copy offloading in salvaging mode');
  if (o.n && o.o.length > 0) fail('-o has no effect when skipping image creation');
  let options: CreateOptions;
  try {
    const pairs = o.o.length ? parseOptionList(mergeOptionLists(o.o)) : [];
    if (hasHelpOption(pairs)) {
      // qemu-img: without -O the output format is raw; with both file names the protocol's options are listed too.
      const fmt = o.O ?? 'raw';
      requireCreatable(fmt);
      out(createOptionsHelp(fmt as 'qcow2' | 'raw', dst !== undefined));
      return;
    }
    options = toCreateOptions(pairs, undefined, { onWarning: warn });
    if (o.B !== undefined) options.backingFile = o.B;
    if (o.F !== undefined) options.backingFormat = o.F;
  } catch (e) {
    if (e instanceof Exit) throw e;
    reportEach(messageOf(e));
    throw new Exit(1);
  }
  if (src === undefined || dst === undefined) fail('Must specify image file name');
  if (sources.length > 1 && o.l !== undefined && snapshot !== undefined && 'idOrName' in snapshot) fail('No support for concatenating multiple snapshot');
  if (o.salvage) fail('convert --salvage is not supported: this tool stops at the first read error; convert without --salvage');
  if (o.O !== undefined && o.O !== 'qcow2' && o.O !== 'raw') fail(`Unknown output format '${o.O}': this tool writes qcow2 and raw images (-O qcow2, -O raw)`);
  if (o.t !== undefined && !CACHE_MODES.includes(o.t)) fail(`Invalid cache option: ${o.t}`);
  const url = /^https?:\/\//i.test(src);
  if (sources.length > 1 && sources.some((s) => /^https?:\/\//i.test(s))) {
    fail('Several sources are read as files of this machine: download each URL first (convert --checksum URL FILE), then convert the files');
  }
  // A URL is fetched by the engine; a file name is read as qemu-img reads it (file:, json:, --image-opts).
  const from: ImageName = url ? { path: src, display: src } : imageName(src);
  const format = o.f ?? from.format;
  const target = imageName(dst);
  const opts: ImportOptions = {
    durable: (o.t ?? 'unsafe') !== 'unsafe',
    ...(o.bitmaps ? { bitmaps: true, skipBrokenBitmaps: o.skipBrokenBitmaps ?? false } : {}),
    ...(o.c ? { compressed: true } : {}),
    // qemu-img's default output format is raw (a new file: nothing of the user's is overwritten);
    // with -n the existing image is written as the qcow2 image it is.
    ...((o.O ?? (o.n ? 'qcow2' : 'raw')) === 'raw' ? { targetFormat: 'raw' as const } : {}),
    // qemu-img convert -B / -o backing_file=: the new image is an overlay.
    ...(options.backingFile !== undefined ? { overBacking: true } : {}),
    ...(sparse !== undefined ? { sparse } : {}),
  };
  const more = sources.slice(1).map((name) => imageName(name));
  if (more.length > 0) opts.moreSources = more.map((name) => importSource(name, target, o.f ?? name.format));
  if (o.n && o.c) fail('convert -n -c (compressed writes into an existing image) is not supported: convert -c into a new image');
  // qemu-img's `    (NN.NN/100%)` lines, except on a terminal, where a bar is drawn instead.
  const bar = o.p && !o.q ? (isTerminal(1) ? progressBar() : qemuLines()) : undefined;
  if (bar) {
    // A download (not a cache hit) is the first half of the figure, the conversion the second.
    let downloadShare = 0;
    if (url) {
      opts.download = (received, total) => {
        if (total === undefined || total === 0) return;
        if (downloadShare === 0 && received < total) downloadShare = 50;
        bar.update((received / total) * downloadShare, `downloaded ${mib(received)} of ${mib(total)} MiB`);
      };
    }
    opts.progress = (done, total) => bar.update(downloadShare + (total === 0 ? 1 : done / total) * (100 - downloadShare), `${mib(done)}/${mib(total)} MiB`);
  }
  try {
    const source: ImportSource = {
      ...importSource(from, target, format),
      ...(o.checksum !== undefined ? { checksum: o.checksum } : {}),
      ...(snapshot ? { snapshot } : {}),
    };
    if (o.n) {
      await engineFor(target, from).convertInto(target.path, source, opts);
    } else {
      await engineFor(target, from).import(target.path, options, source, opts);
    }
    // qemu-img warns of each inconsistent bitmap it leaves out as it copies the bitmaps, after the data.
    if (o.bitmaps && o.skipBrokenBitmaps && !url) {
      const facts = await engineFor(from).info(from.path, { format: format === undefined ? 'probe' : format === 'raw' ? 'raw' : 'qcow2', forceShare: true });
      for (const w of skippedBitmapWarnings({ sourceFormat: facts.format ?? 'qcow2', bitmaps: bitmapStates(facts), targetCompat: '1.1', skipBroken: true })) warn(w);
    }
  } catch (e) {
    bar?.stop();
    // A missing backing file of -B / -o backing_file=: qemu-img creates the new image without
    // looking at it, then fails to open it (we create nothing).
    const backing = /^Could not open '([^]*)': ([^]*)\nCould not open backing image\.$/.exec(messageOf(e));
    if (backing) {
      report(`Could not open '${dst}': Could not open backing file: Could not open '${backing[1]}': ${backing[2]}`);
      throw new Exit(1);
    }
    // qemu-img opens the source, then loads the snapshot: its failure is not an open error.
    // The source that failed to open, of several.
    const failed = more.find((name) => Qcow2Error.isInstance(e) && e.file !== undefined && resolve(e.file) === resolve(name.path))?.display ?? (url ? redactUrl(src) : src);
    report((/^Failed to load snapshot: /.test(messageOf(e)) ? '' : openPrefix(e, failed)) + messageOf(e));
    throw new Exit(1);
  }
  bar?.stop();
}

const mib = (n: number) => Math.round(n / 1048576);

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

/** -p's figure: a percentage, with what it counts (shown on a terminal). */
interface Meter { update(percent: number, detail: string): void; stop(): void }

function qemuLines(): Meter {
  const p = qemuProgress();
  return { update: (percent) => p.update(percent), stop: () => p.end() };
}

function progressBar(): Meter {
  const cliProgress = require('cli-progress') as typeof import('cli-progress');
  const bar = new cliProgress.SingleBar({ format: '    [{bar}] {percentage}% | {detail}', hideCursor: true, clearOnComplete: false }, cliProgress.Presets.shades_classic);
  let started = false;
  return {
    update: (percent, detail) => {
      if (!started) { bar.start(100, 0, { detail }); started = true; }
      bar.update(Math.round(percent * 100) / 100, { detail });
    },
    stop: () => { if (started) bar.stop(); },
  };
}
