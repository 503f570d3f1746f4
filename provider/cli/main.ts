#!/usr/bin/env node
// `qcow2`: a qemu-img-compatible command line over the native format engine. Syntax, output
// and exit codes follow qemu-img 7.2; messages are prefixed `qcow2:` where qemu-img prints
// `qemu-img:`. Commander parses the command line; the `-o` list syntax is ours (optlist.ts).

import { Command, CommanderError, Option } from 'commander';
import { checkExitCode, checkHumanText, checkImageFile, checkJson } from '../qcow2/ops/check';
import { amendImage, createImage, rebaseUnsafe, resizeImage } from '../engines/native/ops';
import { importImage, mapImage, rebaseImage } from '../engines/native/ops';
import { mapHumanText, mapJsonText } from '../qcow2/ops/map';
import * as cliProgress from 'cli-progress';
import { parseSize } from '../model/size';
import { Qcow2Error } from '../model/errors';
import { imageInfo, infoHumanText, infoJsonText } from '../qcow2/ops/info';
import { formattingLine } from './formatting';
import { createOptionsHelp, hasHelpOption, mergeOptionLists, parseOptionList, raisedAfterFormatting, toAmendRequest, toCreateOptions } from './optlist';

const PROG = 'qcow2';

/** Thrown to end the process with a code after output was written. */
class Exit extends Error {
  constructor(readonly code: number) { super(`exit ${code}`); }
}

function report(lines: string, file?: string): void {
  const [first, ...rest] = lines.split('\n');
  process.stderr.write(`${PROG}: ${file !== undefined ? `${file}: ` : ''}${first}\n`);
  for (const l of rest) process.stderr.write(`${l}\n`);
}

function reportEach(lines: string): void {
  for (const l of lines.split('\n')) process.stderr.write(`${PROG}: ${l}\n`);
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

function requireQcow2(fmt: string | undefined): void {
  if (fmt !== undefined && fmt !== 'qcow2') {
    report(`Unknown file format '${fmt}': this tool handles qcow2 images only`);
    throw new Exit(1);
  }
}

function outputFormat(v: string | undefined): 'human' | 'json' {
  if (v === undefined || v === 'human') return 'human';
  if (v === 'json') return 'json';
  report(`--output must be used with human or json as argument.`);
  throw new Exit(1);
}

export function buildProgram(): Command {
  const program = new Command(PROG)
    .description('qemu-img-compatible qcow2 tool (native engine, no QEMU needed)')
    .version(require('../../../package.json').version as string, '-V, --version')
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({ outputError: (str) => process.stderr.write(`${PROG}: ${str.replace(/^error: /, '')}`) });

  program
    .command('create')
    .description('create a new qcow2 image (never overwrites an existing image or data file)')
    .usage('[-f qcow2] [-o OPTIONS] [-b BACKING -F FMT] [-u] [-q] [--adopt-data-file] FILE [SIZE]')
    .option('-f <fmt>', 'image format (qcow2)')
    .option('-o <options>', 'comma-separated create options; `-o help` lists them (repeatable)', collect, [] as string[])
    .option('-b <backing_file>', 'backing file')
    .option('-F <backing_fmt>', 'backing file format')
    .option('-u', 'do not open the backing file (a size must be given)')
    .option('-q', 'quiet: do not print the Formatting line')
    .option('--adopt-data-file', 'wrap the existing data file named by data_file= unchanged instead of refusing')
    .argument('[file]')
    .argument('[size]')
    .action((file: string | undefined, size: string | undefined, o: { f?: string; o: string[]; b?: string; F?: string; u?: boolean; q?: boolean; adoptDataFile?: boolean }) => {
      requireQcow2(o.f);
      let text: string;
      try {
        text = mergeOptionLists(o.o);
      } catch (e) {
        report((e as Error).message);
        throw new Exit(1);
      }
      const pairs = o.o.length ? parseOptionList(text) : [];
      if (hasHelpOption(pairs)) {
        process.stdout.write(createOptionsHelp());
        return;
      }
      if (file === undefined) {
        report('Expecting image file name');
        throw new Exit(1);
      }
      const extra: Array<[string, string]> = [];
      if (o.b !== undefined) extra.push(['backing_file', o.b]);
      if (o.F !== undefined) extra.push(['backing_fmt', o.F]);
      let options;
      try {
        options = toCreateOptions([...pairs, ...extra], size, {
          unsafe: o.u ?? false,
          onWarning: (m) => process.stderr.write(`${PROG}: warning: ${m}\n`),
        });
      } catch (e) {
        if (Qcow2Error.isInstance(e)) {
          if (raisedAfterFormatting(e) && !o.q) process.stdout.write(formattingLine(file, [...pairs, ...extra], size) + '\n');
          report(e.message, file);
        } else {
          reportEach((e as Error).message);
        }
        throw new Exit(1);
      }
      if (o.adoptDataFile) options.adoptDataFile = true;
      if (options.size === undefined && (options.backingFile === undefined || o.u) && !options.adoptDataFile) {
        report('Image creation needs a size parameter', file); // qemu-img says so before Formatting
        throw new Exit(1);
      }
      if (!o.q) process.stdout.write(formattingLine(file, [...pairs, ...extra], size, options) + '\n');
      try {
        createImage(file, options, { unsafeBacking: o.u ?? false });
      } catch (e) {
        report((e as Error).message, file);
        throw new Exit(1);
      }
    });

  program
    .command('info')
    .description('show image information (reads the header only; never opens the data file)')
    .option('-f <fmt>', 'image format (qcow2)')
    .option('-U, --force-share', 'open the image read-only without taking locks')
    .addOption(new Option('--output <format>', 'human or json'))
    .argument('<file>')
    .action((file: string, o: { f?: string; output?: string }) => {
      requireQcow2(o.f);
      const fmt = outputFormat(o.output);
      try {
        const info = imageInfo(file);
        process.stdout.write(fmt === 'json' ? infoJsonText(info) + '\n' : infoHumanText(info));
      } catch (e) {
        report(`Could not open '${file}': ${(e as Error).message}`);
        throw new Exit(1);
      }
    });

  program
    .command('check')
    .description('check refcount and L1/L2 consistency; exit 0 clean, 1 could not check, 2 corrupt, 3 leaks')
    .option('-f <fmt>', 'image format (qcow2)')
    .option('-q', 'quiet')
    .option('-U, --force-share', 'open the image read-only without taking locks')
    .addOption(new Option('--output <format>', 'human or json'))
    .argument('<file>')
    .action((file: string, o: { f?: string; q?: boolean; output?: string; forceShare?: boolean }) => {
      requireQcow2(o.f);
      const fmt = outputFormat(o.output);
      let r;
      try {
        r = checkImageFile(file, { forceShare: o.forceShare ?? false });
      } catch (e) {
        report(`Could not open '${file}': ${(e as Error).message}`);
        throw new Exit(1);
      }
      for (const m of r.messages) process.stderr.write(m + '\n');
      const code = checkExitCode(r);
      if (!o.q) process.stdout.write(fmt === 'json' ? JSON.stringify(checkJson(r, file), null, 4) + '\n' : checkHumanText(r));
      if (code === 1) report('Check failed');
      if (code !== 0) throw new Exit(code);
    });

  program
    .command('amend')
    .description('change options of an existing image, all or nothing (validated before anything is written)')
    .usage('[-f qcow2] -o OPTIONS [-q] FILE')
    .option('-f <fmt>', 'image format (qcow2)')
    .option('-o <options>', 'options to change: compat, lazy_refcounts, refcount_bits, size, data_file, data_file_raw (repeatable)', collect, [] as string[])
    .option('-q', 'quiet')
    .option('-p', 'progress (accepted for compatibility; amend is a single commit)')
    .argument('<file>')
    .action((file: string, o: { f?: string; o: string[] }) => {
      requireQcow2(o.f);
      if (!o.o.length) {
        report('Must specify options (-o)');
        throw new Exit(1);
      }
      let req;
      try {
        req = toAmendRequest(parseOptionList(mergeOptionLists(o.o)));
      } catch (e) {
        report((e as Error).message);
        throw new Exit(1);
      }
      onImage(file, () => amendImage(file, req));
    });

  program
    .command('resize')
    .description('change the virtual size; shrinking needs --shrink and deletes data beyond the new end')
    .usage('[-f qcow2] [--shrink] [-q] FILE [+|-]SIZE')
    .option('-f <fmt>', 'image format (qcow2)')
    .option('--shrink', 'allow shrinking the image')
    .option('-q', 'quiet')
    .argument('<file>')
    .argument('<size>')
    .allowUnknownOption(false)
    .action((file: string, sizeText: string, o: { f?: string; shrink?: boolean; q?: boolean }) => {
      requireQcow2(o.f);
      let size: bigint | { relative: bigint };
      try {
        const sign = sizeText.startsWith('+') ? 1n : sizeText.startsWith('-') ? -1n : 0n;
        const n = parseSize(sign ? sizeText.slice(1) : sizeText);
        size = sign ? { relative: sign * n } : n;
      } catch (e) {
        reportEach((e as Error).message);
        throw new Exit(1);
      }
      try {
        resizeImage(file, size, { allowShrink: o.shrink ?? false });
      } catch (e) {
        report(openPrefix(e, file) + (e as Error).message);
        // qemu-img warns after refusing a shrink that lacks --shrink (and never on success).
        if (/^Use the --shrink option/.test((e as Error).message)) {
          process.stderr.write(`${PROG}: warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.\n`);
        }
        throw new Exit(1);
      }
      if (!o.q) process.stdout.write('Image resized.\n');
    });

  program
    .command('rebase')
    .description('change the backing file; without -u, clusters that differ between the old and the new chain are ' +
      'copied into the image first, so the guest view is unchanged; refused on data-file-raw images')
    .usage('[-f qcow2] [-u] -b BACKING -F FMT [-q] FILE')
    .option('-f <fmt>', 'image format (qcow2)')
    .option('-u', 'unsafe: only rewrite the backing file reference (the guest view may change)')
    .option('-b <backing_file>', "new backing file ('' for none)")
    .option('-F <backing_fmt>', 'backing file format')
    .option('-q', 'quiet')
    .argument('<file>')
    .action((file: string, o: { f?: string; u?: boolean; b?: string; F?: string }) => {
      requireQcow2(o.f);
      if (o.b === undefined) {
        report('Must specify backing file (-b) or use unsafe mode (-u)');
        throw new Exit(1);
      }
      // Without -u, what differs between the chains is copied first.
      onImage(file, () => (o.u ? rebaseUnsafe(file, o.b!, o.F) : rebaseImage(file, o.b!, o.F)));
    });

  program
    .command('convert')
    .description('import a raw or qcow2 image (read through its backing chain) into a new qcow2 image; never overwrites')
    .usage('[-p] [-q] [-f raw|qcow2] -O qcow2 [-o OPTIONS] SRC DST')
    .option('-f <fmt>', 'source format: raw or qcow2 (probed when omitted)')
    .option('-O <fmt>', 'output format (qcow2)')
    .option('-o <options>', 'create options of the new image (repeatable); its size comes from the source', collect, [] as string[])
    .option('-p', 'show a progress bar')
    .option('-q', 'quiet')
    .option('-c', 'compress the output (not supported: refused)')
    .argument('<src>')
    .argument('<dst>')
    .action((src: string, dst: string, o: { f?: string; O?: string; o: string[]; p?: boolean; q?: boolean; c?: boolean }) => {
      let options;
      try {
        const pairs = o.o.length ? parseOptionList(mergeOptionLists(o.o)) : [];
        if (hasHelpOption(pairs)) {
          process.stdout.write(createOptionsHelp());
          return;
        }
        options = toCreateOptions(pairs, undefined, { onWarning: (m) => process.stderr.write(`${PROG}: warning: ${m}\n`) });
      } catch (e) {
        reportEach((e as Error).message);
        throw new Exit(1);
      }
      if (o.O !== undefined && o.O !== 'qcow2') {
        report(`Unknown output format '${o.O}': this tool writes qcow2 images only (-O qcow2)`);
        throw new Exit(1);
      }
      if (o.c) {
        report('Compressed output (-c) is not supported by the native engine; use qemu-img convert -c');
        throw new Exit(1);
      }
      const bar = o.p && !o.q
        ? new cliProgress.SingleBar({ format: '    [{bar}] {percentage}% | {value}/{total} MiB', hideCursor: true, clearOnComplete: false }, cliProgress.Presets.shades_classic)
        : undefined;
      let started = false;
      try {
        const source = o.f !== undefined ? { path: src, format: o.f } : { path: src };
        importImage(dst, options, source, {
          progress: bar ? (done, total) => {
            const mib = (n: number) => Math.round(n / 1048576);
            if (!started) { bar.start(mib(total), 0); started = true; }
            bar.update(mib(done));
          } : undefined,
        });
      } catch (e) {
        if (started) bar?.stop();
        report(openPrefix(e, src) + (e as Error).message);
        throw new Exit(1);
      }
      if (started) bar?.stop();
    });

  program
    .command('map')
    .description('show the allocation map of an image through its backing chain (qemu-img map)')
    .usage('[-f qcow2] [--output=human|json] [-U] FILE')
    .option('-f <fmt>', 'image format (qcow2)')
    .option('-U, --force-share', 'open the image read-only without taking locks')
    .addOption(new Option('--output <format>', 'human or json'))
    .argument('<file>')
    .action((file: string, o: { f?: string; output?: string; forceShare?: boolean }) => {
      requireQcow2(o.f);
      const fmt = outputFormat(o.output);
      const entries = onImage(file, () => mapImage(file, { format: 'qcow2', forceShare: o.forceShare ?? false }));
      process.stdout.write(fmt === 'json' ? mapJsonText(entries) : mapHumanText(entries));
    });

  return program;
}

/** Run an operation on FILE; on failure, report it as qemu-img would and exit 1. */
function onImage<T>(file: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    report(openPrefix(e, file) + (e as Error).message);
    throw new Exit(1);
  }
}

/** qemu-img prefixes open failures with `Could not open 'FILE': `; refusals stand alone. */
function openPrefix(e: unknown, file: string): string {
  return Qcow2Error.isInstance(e) && (e.code === 'INVALID_IMAGE' || e.code === 'UNSUPPORTED' || e.code === 'NOT_FOUND' || e.code === 'LOCKED')
    ? `Could not open '${file}': ` : '';
}

export function main(argv: string[]): number {
  try {
    buildProgram().parse(argv, { from: 'user' });
    return 0;
  } catch (e) {
    if (e instanceof Exit) return e.code;
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 1;
    report((e as Error).stack ?? String(e));
    return 1;
  }
}

if (require.main === module) {
  process.exitCode = main(process.argv.slice(2));
}
