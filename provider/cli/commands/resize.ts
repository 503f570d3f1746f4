// `qcow2 resize [-f qcow2] [--shrink] [--preallocation=MODE] [-q] FILE [+|-]SIZE`: change the virtual size.

const PREALLOCATION = ['off', 'metadata', 'falloc', 'full'] as const;
function isResizePreallocation(s: string): s is typeof PREALLOCATION[number] {
  return (PREALLOCATION as readonly string[]).includes(s);
}

import { imageName, requireQcow2 } from '../args';
import { CommandSpec, parseCommand } from '../commander';
import { engineFor } from '../engine';
import { Exit, fail, messageOf, openPrefix, report, warn } from '../report';
import { parseSizeOption } from '../../model/size';
import { resolveBackingName } from '../../model/backing-name';
import { err, isTerminal, out } from '../io';
import { repairDirtyFirst } from '../dirty';

export const usage = 'resize [-f qcow2] [--shrink] [--preallocation=off|metadata|falloc|full] [-q] FILE [+|-]SIZE';
export const description = 'change the virtual size; shrinking needs --shrink and deletes data beyond the new end';

interface Opts { f?: string; shrink?: boolean; q?: boolean; preallocation?: string }

const spec: CommandSpec = {
  name: 'resize', usage, description, args: ['<file>', '<size>'],
  options: [
    ['-f <fmt>', 'image format (qcow2)'],
    ['--shrink', 'allow shrinking the image'],
    ['--preallocation <mode>', 'preallocation of the new area when growing: off, metadata (tables and data clusters), falloc or full (data clusters written as zeros)'],
    ['-q', 'quiet'],
  ],
};

export async function run(argv: string[]): Promise<void> {
  const parsed = parseCommand<Opts>(spec, argv);
  if (parsed === undefined) return;
  const [file, sizeText] = parsed.args as [string, string]; // both required: commander refused otherwise
  const { o } = parsed;
  requireQcow2(o.f);
  const prealloc = o.preallocation ?? 'off';
  // qemu-img's own check first: only these words are preallocation modes.
  if (!isResizePreallocation(prealloc)) fail(`Invalid preallocation mode '${prealloc}'`);
  let size: bigint | { relative: bigint };
  try {
    const sign = sizeText.startsWith('+') ? 1n : sizeText.startsWith('-') ? -1n : 0n;
    // qemu-img sets the size as a QemuOpts size (below 2^64), then reads it as an int64: 8E and
    // more wrap negative and are refused as not positive.
    const n = BigInt.asIntN(64, parseSizeOption('size', sign ? sizeText.slice(1) : sizeText));
    size = sign ? { relative: sign * n } : n;
  } catch (e) {
    report(messageOf(e)); // QemuOpts' hint lines are printed bare
    throw new Exit(1);
  }
  const image = imageName(file);
  try {
    await repairDirtyFirst(image);
    const engine = engineFor(image);
    const path = image.path;
    const facts = await engine.info(path, { forceShare: true }).catch(() => undefined);
    if (facts !== undefined && (typeof size === 'bigint' ? size : facts.virtualSize + size.relative) <= 0n) fail('New image size must be positive');
    // A data-file-raw image's data file changes size with it, as in qemu-img: the file the
    // header names, which may not be where the user expects. Say which one it is, to a person
    // at a terminal (scripts get qemu-img's output unchanged).
    if (facts?.dataFileRaw && facts.dataFile && !o.q && isTerminal(2)) err(`Resizing data file '${resolveBackingName(path, facts.dataFile)}' with the image (data_file_raw).\n`);
    await engine.resize(path, size, { allowShrink: o.shrink ?? false, preallocation: prealloc });
  } catch (e) {
    if (e instanceof Exit) throw e;
    report(openPrefix(e, file) + messageOf(e));
    // qemu-img warns after refusing a shrink that lacks --shrink (and never on success).
    if (/^Use the --shrink option/.test(messageOf(e))) {
      warn("Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.");
    }
    throw new Exit(1);
  }
  if (!o.q) out('Image resized.\n');
}
