// `qcow2 resize [-f qcow2] [--shrink] [-q] FILE [+|-]SIZE`: change the virtual size.

import { imageName, requireQcow2 } from '../args';
import { command } from '../commander';
import { engineFor } from '../engine';
import { Exit, fail, messageOf, openPrefix, report, reportEach, warn } from '../report';
import { parseSize } from '../../model/size';
import { out } from '../io';

export const usage = 'resize [-f qcow2] [--shrink] [--preallocation=off] [-q] FILE [+|-]SIZE';
export const description = 'change the virtual size; shrinking needs --shrink and deletes data beyond the new end';

export async function run(argv: string[]): Promise<void> {
  let parsed: { file: string; sizeText: string; o: { f?: string; shrink?: boolean; q?: boolean; preallocation?: string } } | undefined;
  command('resize')
    .description(description)
    .usage(usage.replace(/^resize /, ''))
    .option('-f <fmt>', 'image format (qcow2)')
    .option('--shrink', 'allow shrinking the image')
    .option('--preallocation <mode>', 'preallocation of the new area: off (metadata, falloc and full are not supported natively)')
    .option('-q', 'quiet')
    .argument('<file>')
    .argument('<size>')
    .allowUnknownOption(false)
    .action((file: string, sizeText: string, o: { f?: string; shrink?: boolean; q?: boolean; preallocation?: string }) => { parsed = { file, sizeText, o }; })
    .parse(argv, { from: 'user' });
  if (parsed === undefined) return;
  const { file, sizeText, o } = parsed;
  requireQcow2(o.f);
  const prealloc = o.preallocation;
  if (prealloc !== undefined && prealloc !== 'off') {
    // qemu-img's own check first: only these words are preallocation modes.
    if (!['metadata', 'falloc', 'full'].includes(prealloc)) fail(`Invalid preallocation mode '${prealloc}'`);
    fail(`Preallocation mode '${prealloc}' for resize is not supported by the native engine: resize with --preallocation=off (new clusters are allocated on first write)`, file);
  }
  let size: bigint | { relative: bigint };
  try {
    const sign = sizeText.startsWith('+') ? 1n : sizeText.startsWith('-') ? -1n : 0n;
    const n = parseSize(sign ? sizeText.slice(1) : sizeText);
    size = sign ? { relative: sign * n } : n;
  } catch (e) {
    reportEach(messageOf(e));
    throw new Exit(1);
  }
  const image = imageName(file);
  try {
    await engineFor(image).resize(image.path, size, { allowShrink: o.shrink ?? false });
  } catch (e) {
    report(openPrefix(e, file) + messageOf(e));
    // qemu-img warns after refusing a shrink that lacks --shrink (and never on success).
    if (/^Use the --shrink option/.test(messageOf(e))) {
      warn("Shrinking an image will delete all data beyond the shrunken image's end. Before performing such an operation, make sure there is no important data there.");
    }
    throw new Exit(1);
  }
  if (!o.q) out('Image resized.\n');
}
