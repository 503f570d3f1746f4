// `qcow2 create [-f qcow2] [-o OPTIONS] [-b FILE -F FMT] [-u] [-q] [--adopt-data-file] FILE [SIZE]`:
// qemu-img create's syntax, output and refusals; never overwrites an image or a data file.

import { imageName, requireCreatable } from '../args';
import { CommandSpec, parseCommand } from '../commander';
import { engineFor } from '../engine';
import { createOptionsHelp, hasHelpOption, mergeOptionLists, parseOptionList, raisedAfterFormatting, toCreateOptions, toRawCreateOptions, type OptionPair } from '../optlist';
import { formattingLine } from '../render/formatting';
import { Exit, fail, messageOf, report, reportEach, warn } from '../report';
import { Qcow2Error } from '../../model/errors';
import type { CreateOptions, RawCreateOptions } from '../../model/options';
import { parseSize } from '../../model/size';
import { flushOut, out } from '../io';

/** qemu-img's Formatting line: bdrv_img_create flushes standard output after it (io.ts flushOut). */
function printFormatting(line: string): void {
  out(line);
  flushOut();
}

export const usage = 'create [-f qcow2|raw] [-o OPTIONS] [-b FILE -F FMT] [-u] [-q] [--adopt-data-file] FILE [SIZE]';
export const description = 'create a new qcow2 image (never overwrites an existing image or data file)';

interface Opts { f?: string; o: string[]; b?: string; F?: string; u?: boolean; q?: boolean; adoptDataFile?: boolean }

const spec: CommandSpec = {
  name: 'create', usage, description, args: ['[file]', '[size]'],
  options: [
    ['-f <fmt>', 'image format (qcow2 or raw)'],
    ['-o <options>', 'comma-separated create options; `-o help` lists them (repeatable)', 'repeatable'],
    ['-b <backing_file>', 'backing file'],
    ['-F <backing_fmt>', 'backing file format'],
    ['-u', 'do not open the backing file (a size must be given)'],
    ['-q', 'quiet: do not print the Formatting line'],
    ['--adopt-data-file', 'wrap the existing data file named by data_file= unchanged instead of refusing'],
  ],
};

export async function run(argv: string[]): Promise<void> {
  const parsed = parseCommand<Opts>(spec, argv);
  if (parsed === undefined) return;
  const { args: [file, size], o } = parsed;
  const fmt = createFormat(o.f);
  let text: string;
  try {
    text = mergeOptionLists(o.o);
  } catch (e) {
    fail(messageOf(e));
  }
  const pairs = o.o.length ? parseOptionList(text) : [];
  if (hasHelpOption(pairs)) {
    // Without -f qemu-img lists raw's options (its default format); ours creates qcow2 then.
    out(createOptionsHelp(o.f === undefined ? 'raw' : fmt, file !== undefined));
    return;
  }
  if (file === undefined) fail('Expecting image file name');
  if (fmt === 'raw') return createRaw(file, pairs, size, o);
  const extra: Array<[string, string]> = [];
  if (o.b !== undefined) extra.push(['backing_file', o.b]);
  if (o.F !== undefined) extra.push(['backing_fmt', o.F]);
  const all = [...pairs, ...extra];
  let options: CreateOptions;
  try {
    options = toCreateOptions(all, size, { unsafe: o.u ?? false, onWarning: warn });
  } catch (e) {
    if (Qcow2Error.isInstance(e)) {
      if (raisedAfterFormatting(e) && !o.q) printFormatting(formattingLine(file, all, positionalSize(size)) + '\n');
      report(e.message, file);
    } else {
      reportEach(messageOf(e));
    }
    throw new Exit(1);
  }
  if (o.adoptDataFile) options.adoptDataFile = true;
  if (options.size === undefined && (options.backingFile === undefined || o.u) && !options.adoptDataFile) {
    fail('Image creation needs a size parameter', file); // qemu-img says so before Formatting
  }
  const image = imageName(file, false, true);
  const engine = engineFor(image);
  const target = image.path;
  const behaviour = { unsafeBacking: o.u ?? false };
  // qemu-img opens the backing file (and takes an overlay's size from it) before it prints the
  // Formatting line: a missing backing file fails with no Formatting line.
  let resolvedSize: bigint | undefined;
  try {
    resolvedSize = (await engine.resolveCreate(target, options, behaviour)).size;
  } catch (e) {
    if (!failsBeforeFormatting(e) && !o.q) printFormatting(formattingLine(file, all, options.size) + '\n');
    fail(messageOf(e), file);
  }
  if (!o.q) printFormatting(formattingLine(file, all, options.size ?? resolvedSize) + '\n');
  try {
    await engine.create(target, options, behaviour);
  } catch (e) {
    fail(messageOf(e), file);
  }
}

/** `-f`: qcow2 (default) or raw; encryption formats and the rest are not supported. */
function createFormat(f: string | undefined): 'qcow2' | 'raw' {
  if (f === undefined || f === 'qcow2') return 'qcow2';
  if (f === 'raw') return 'raw';
  requireCreatable(f);
  return 'qcow2';
}

/** The positional SIZE as parsed (for a Formatting line printed before the options are typed), if it parses. */
function positionalSize(size: string | undefined): bigint | undefined {
  if (size === undefined) return undefined;
  try {
    return parseSize(size);
  } catch {
    return undefined;
  }
}

/** Refusals qemu-img makes while it opens the backing file, before the Formatting line. */
function failsBeforeFormatting(e: unknown): boolean {
  const m = messageOf(e);
  return m.includes('Could not open backing image.') || m.startsWith('Backing file specified without backing format') ||
    m.startsWith('Image creation needs a size parameter') || m.startsWith("Backing format '");
}

/** `create -f raw`: size and preallocation (nocow=off and extent_size_hint accepted, as for qcow2). */
async function createRaw(file: string, pairs: OptionPair[], size: string | undefined, o: Opts): Promise<void> {
  if (o.b !== undefined) fail("Backing file not supported for file format 'raw'", file);
  let options: RawCreateOptions;
  try {
    options = toRawCreateOptions(pairs, size, { onWarning: warn });
  } catch (e) {
    if (Qcow2Error.isInstance(e)) {
      if (raisedAfterFormatting(e) && !o.q) printFormatting(formattingLine(file, pairs, positionalSize(size), 'raw') + '\n');
      report(e.message, file);
    } else {
      reportEach(messageOf(e));
    }
    throw new Exit(1);
  }
  if (options.size === undefined) fail('Image creation needs a size parameter', file);
  const image = imageName(file, false, true);
  if (!o.q) printFormatting(formattingLine(file, pairs, options.size, 'raw') + '\n');
  try {
    await engineFor(image).createRaw(image.path, options);
  } catch (e) {
    fail(messageOf(e), file);
  }
}
