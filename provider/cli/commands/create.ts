// `qcow2 create [-f qcow2] [-o OPTIONS] [-b FILE -F FMT] [-u] [-q] [--adopt-data-file] FILE [SIZE]`:
// qemu-img create's syntax, output and refusals; never overwrites an image or a data file.

import { requireQcow2 } from '../args';
import { collect, command } from '../commander';
import { cliEngine } from '../engine';
import { createOptionsHelp, hasHelpOption, mergeOptionLists, parseOptionList, raisedAfterFormatting, toCreateOptions } from '../optlist';
import { formattingLine } from '../render/formatting';
import { Exit, fail, messageOf, report, reportEach, warn } from '../report';
import { Qcow2Error } from '../../model/errors';
import type { CreateOptions } from '../../model/options';
import { out } from '../io';

export const usage = 'create [-f qcow2] [-o OPTIONS] [-b FILE -F FMT] [-u] [-q] [--adopt-data-file] FILE [SIZE]';
export const description = 'create a new qcow2 image (never overwrites an existing image or data file)';

interface Opts { f?: string; o: string[]; b?: string; F?: string; u?: boolean; q?: boolean; adoptDataFile?: boolean }

export async function run(argv: string[]): Promise<void> {
  let parsed: { file?: string; size?: string; o: Opts } | undefined;
  command('create')
    .description(description)
    .usage(usage.replace(/^create /, ''))
    .option('-f <fmt>', 'image format (qcow2)')
    .option('-o <options>', 'comma-separated create options; `-o help` lists them (repeatable)', collect, [] as string[])
    .option('-b <backing_file>', 'backing file')
    .option('-F <backing_fmt>', 'backing file format')
    .option('-u', 'do not open the backing file (a size must be given)')
    .option('-q', 'quiet: do not print the Formatting line')
    .option('--adopt-data-file', 'wrap the existing data file named by data_file= unchanged instead of refusing')
    .argument('[file]')
    .argument('[size]')
    .action((file: string | undefined, size: string | undefined, o: Opts) => { parsed = { o, ...(file !== undefined ? { file } : {}), ...(size !== undefined ? { size } : {}) }; })
    .parse(argv, { from: 'user' });
  if (parsed === undefined) return;
  const { file, size, o } = parsed;
  requireQcow2(o.f);
  let text: string;
  try {
    text = mergeOptionLists(o.o);
  } catch (e) {
    fail(messageOf(e));
  }
  const pairs = o.o.length ? parseOptionList(text) : [];
  if (hasHelpOption(pairs)) {
    out(createOptionsHelp());
    return;
  }
  if (file === undefined) fail('Expecting image file name');
  const extra: Array<[string, string]> = [];
  if (o.b !== undefined) extra.push(['backing_file', o.b]);
  if (o.F !== undefined) extra.push(['backing_fmt', o.F]);
  let options: CreateOptions;
  try {
    options = toCreateOptions([...pairs, ...extra], size, { unsafe: o.u ?? false, onWarning: warn });
  } catch (e) {
    if (Qcow2Error.isInstance(e)) {
      if (raisedAfterFormatting(e) && !o.q) out(formattingLine(file, [...pairs, ...extra], size) + '\n');
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
  if (!o.q) out(formattingLine(file, [...pairs, ...extra], size, options) + '\n');
  try {
    await cliEngine().create(file, options, { unsafeBacking: o.u ?? false });
  } catch (e) {
    fail(messageOf(e), file);
  }
}
