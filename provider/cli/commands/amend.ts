// `qcow2 amend [-f qcow2] -o OPTIONS FILE`: change options all or nothing (provider/rules
// validates the whole request before anything is written).

import { requireQcow2 } from '../args';
import { collect, command } from '../commander';
import { cliEngine } from '../engine';
import { amendOptionsHelp, hasHelpOption, mergeOptionLists, parseOptionList, toAmendRequest } from '../optlist';
import { out } from '../io';
import { fail, failOn, messageOf } from '../report';
import type { AmendRequest } from '../../rules/types';

export const usage = 'amend [-f qcow2] -o OPTIONS [-q] FILE';
export const description = 'change options of an existing image, all or nothing (validated before anything is written)';

export async function run(argv: string[]): Promise<void> {
  let parsed: { file?: string; o: { f?: string; o: string[] } } | undefined;
  command('amend')
    .description(description)
    .usage(usage.replace(/^amend /, ''))
    .option('-f <fmt>', 'image format (qcow2)')
    .option('-o <options>', 'options to change: compat, lazy_refcounts, refcount_bits, size, data_file, data_file_raw (repeatable)', collect, [] as string[])
    .option('-q', 'quiet')
    .option('-p', 'progress (accepted for compatibility; amend is a single commit)')
    .argument('[file]')
    .action((file: string | undefined, o: { f?: string; o: string[] }) => { parsed = { o, ...(file !== undefined ? { file } : {}) }; })
    .parse(argv, { from: 'user' });
  if (parsed === undefined) return;
  const { file, o } = parsed;
  let pairs;
  try {
    pairs = parseOptionList(mergeOptionLists(o.o));
  } catch (e) {
    fail(messageOf(e));
  }
  // qemu-img: the file name is required even for help; the format is checked before help.
  if (file === undefined) fail('Expecting one image file name');
  if (hasHelpOption(pairs)) {
    if (o.f !== undefined && o.f !== 'qcow2') fail(`Format driver '${o.f}' does not support option amendment`);
    out(amendOptionsHelp());
    return;
  }
  requireQcow2(o.f);
  if (!o.o.length) fail('Must specify options (-o)');
  let req: AmendRequest;
  try {
    req = toAmendRequest(pairs);
  } catch (e) {
    fail(messageOf(e));
  }
  try {
    await cliEngine().amend(file, req);
  } catch (e) {
    failOn(e, file);
  }
}
