// `qcow2 amend [-f qcow2] -o OPTIONS FILE`: change options all or nothing (provider/rules
// validates the whole request before anything is written).

import { READ_ONLY_DRIVERS, imageName, requireQcow2 } from '../args';
import { CommandSpec, parseCommand } from '../commander';
import { engineFor } from '../engine';
import { amendOptionsHelp, hasHelpOption, mergeOptionLists, parseOptionList, toAmendRequest } from '../optlist';
import { out } from '../io';
import { fail, failOn, messageOf } from '../report';
import type { AmendRequest } from '../../rules/types';
import { repairDirtyFirst } from '../dirty';

export const usage = 'amend [-f qcow2] -o OPTIONS [-q] FILE';
export const description = 'change options of an existing image, all or nothing (validated before anything is written)';

const spec: CommandSpec = {
  name: 'amend', usage, description, args: ['[file]'],
  options: [
    ['-f <fmt>', 'image format (qcow2)'],
    ['-o <options>', 'options to change: compat, lazy_refcounts, refcount_bits, size, data_file, data_file_raw (repeatable)', 'repeatable'],
    ['-q', 'quiet'],
    ['-p', 'progress (accepted for compatibility; amend is a single commit)'],
  ],
};

export async function run(argv: string[]): Promise<void> {
  const parsed = parseCommand<{ f?: string; o: string[] }>(spec, argv);
  if (parsed === undefined) return;
  const { args: [file], o } = parsed;
  if (!o.o.length) fail('Must specify options (-o)');
  let pairs;
  try {
    pairs = parseOptionList(mergeOptionLists(o.o));
  } catch (e) {
    fail(messageOf(e));
  }
  // qemu-img's img_amend: with -f, help needs no file name; without, the image's format is used.
  if (hasHelpOption(pairs) && (o.f !== undefined || file !== undefined)) {
    if (o.f !== undefined && o.f !== 'qcow2') {
      fail(READ_ONLY_DRIVERS.has(o.f) || o.f === 'raw' ? `Format driver '${o.f}' does not support option amendment` : `Unknown file format '${o.f}'`);
    }
    out(amendOptionsHelp());
    return;
  }
  if (file === undefined) fail('Expecting one image file name');
  requireQcow2(o.f);
  // qemu-img opens the image (repairing a dirty one) before it checks the options.
  await repairDirtyFirst(imageName(file)).catch((e: unknown) => failOn(e, file));
  let req: AmendRequest;
  try {
    req = toAmendRequest(pairs);
  } catch (e) {
    fail(messageOf(e));
  }
  try {
    const image = imageName(file);
    await engineFor(image).amend(image.path, req);
  } catch (e) {
    failOn(e, file);
  }
}
