// `qcow2 rebase [-f qcow2] [-u] -b FILE -F FMT [-q] FILE`: change the backing file. Without -u
// the clusters that differ between the old and the new chain are copied first.

import { imageName, requireQcow2 } from '../args';
import { CommandSpec, parseCommand } from '../commander';
import { engineFor } from '../engine';
import { fail, failOn } from '../report';
import { repairDirtyFirst } from '../dirty';

export const usage = 'rebase [-f qcow2] [-u] -b BACKING -F FMT [-q] FILE';
export const description = 'change the backing file; without -u, clusters that differ between the old and the new chain are ' +
  'copied into the image first, so the guest view is unchanged; refused on data-file-raw images';

interface Opts { f?: string; u?: boolean; b?: string; F?: string }

const spec: CommandSpec = {
  name: 'rebase', usage, description, args: ['<file>'],
  options: [
    ['-f <fmt>', 'image format (qcow2)'],
    ['-u', 'unsafe: only rewrite the backing file reference (the guest view may change)'],
    ['-b <backing_file>', "new backing file ('' for none)"],
    ['-F <backing_fmt>', 'backing file format'],
    ['-q', 'quiet'],
  ],
};

export async function run(argv: string[]): Promise<void> {
  const parsed = parseCommand<Opts>(spec, argv);
  if (parsed === undefined) return;
  const [file] = parsed.args as [string]; // required: commander refused otherwise
  const { o } = parsed;
  requireQcow2(o.f);
  if (o.b === undefined) fail('Must specify backing file (-b) or use unsafe mode (-u)');
  try {
    const image = imageName(file);
    await repairDirtyFirst(image);
    await engineFor(image).rebase(image.path, o.b, o.F, { safe: !o.u });
  } catch (e) {
    failOn(e, file);
  }
}
