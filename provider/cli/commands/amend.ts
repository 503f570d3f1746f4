// `qcow2 amend [-f qcow2] -o OPTIONS FILE`: change options all or nothing (provider/rules
// validates the whole request before anything is written).

import { READ_ONLY_DRIVERS, imageName, requireQcow2 } from '../args';
import { CommandSpec, parseCommand } from '../commander';
import { engineFor } from '../engine';
import { amendOptionsHelp, hasHelpOption, mergeOptionLists, parseOptionList, toAmendRequest } from '../optlist';
import { out } from '../io';
import { qemuProgress } from '../render/progress';
import { amendProgress } from '../../engines/local-facts';
import { Exit, fail, failOn, messageOf, reportEach } from '../report';
import { Qcow2Error } from '../../model/errors';
import type { AmendRequest } from '../../rules/types';
import { repairDirtyFirst } from '../dirty';

export const usage = 'amend [-f qcow2] -o OPTIONS [-p] [-q] FILE';
export const description = 'change options of an existing image, all or nothing (validated before anything is written)';

const spec: CommandSpec = {
  name: 'amend', usage, description, args: ['[file]'],
  options: [
    ['-f <fmt>', 'image format (qcow2)'],
    ['-o <options>', 'options to change: compat, lazy_refcounts, refcount_bits, size, data_file, data_file_raw (repeatable)', 'repeatable'],
    ['-q', 'quiet'],
    ['--image-opts', 'FILE is an option list (driver=qcow2,file.filename=NAME) rather than a file name'],
    ['-p', "progress: qemu-img's figures for its steps, on standard output (the change itself is one commit)"],
  ],
};

export async function run(argv: string[]): Promise<void> {
  const parsed = parseCommand<{ f?: string; o: string[]; p?: boolean; q?: boolean; imageOpts?: boolean }>(spec, argv);
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
  const image = imageName(file, o.imageOpts === true);
  await repairDirtyFirst(image).catch((e: unknown) => failOn(e, file));
  let req: AmendRequest;
  try {
    req = toAmendRequest(pairs);
  } catch (e) {
    fail(messageOf(e));
  }
  // qemu-img's -p: 0 before the change, QEMU's own step figures, 100, then the error if any.
  const progress = o.p && !o.q ? qemuProgress(true) : undefined;
  let figures: number[] = [];
  if (progress && image.remote === undefined) {
    try {
      figures = amendProgress(image.path, {
        ...(req.compat !== undefined ? { version: req.compat === '0.10' ? 2 as const : 3 as const } : {}),
        ...(req.refcountBits !== undefined ? { refcountOrder: Math.log2(req.refcountBits) } : {}),
      });
    } catch {
      // An image these figures cannot be read from is the amend's to refuse, in its words.
    }
  }
  try {
    await engineFor(image).amend(image.path, req);
    for (const f of figures) progress?.update(f);
  } catch (e) {
    progress?.end();
    // qemu-img reports a broken snapshot table met by the downgrade as separate error lines.
    if (Qcow2Error.isInstance(e) && e.code === 'REFUSED' && e.property === 'snapshot') {
      reportEach(e.message);
      throw new Exit(1);
    }
    failOn(e, file);
  }
  progress?.end();
}
