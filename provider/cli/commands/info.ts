// `qcow2 info [-f qcow2|raw] [-U] [--backing-chain] [--output=human|json] FILE`: the image's
// facts from its header, printed as qemu-img info prints them. Without -U an image a VM is
// writing is refused (LOCKED). Without -f the format is probed (qcow2 magic, else raw).

import { resolveBackingName } from '../../model/backing-name';
import { imageName, parseArgs, outputFormat, requireQcow2OrRaw } from '../args';
import { engineFor } from '../engine';
import { infoChainJsonText, infoHumanText, infoJsonText } from '../render/info';
import { fail, messageOf } from '../report';
import { out } from '../io';
import type { ImageFacts } from '../../engines/engine';

export const usage = 'info [-f qcow2|raw] [-U] [--backing-chain] [--output=human|json] FILE';
export const description = 'show image information (reads the header only; never opens the data file)';

export async function run(argv: string[]): Promise<void> {
  const a = parseArgs(argv, {
    flags: { '-U': 'forceShare', '--force-share': 'forceShare', '--backing-chain': 'chain', '--image-opts': 'imageOpts' },
    values: { '-f': 'format', '--output': 'output' },
  });
  let fmt = a.values.get('format');
  requireQcow2OrRaw(fmt);
  const output = outputFormat(a.values.get('output'));
  let file: string | undefined = a.positional[0];
  if (file === undefined) fail('Expecting one image file name');
  if (a.positional.length > 1) fail(`Unexpected argument '${a.positional[1]}'`);
  const chain: Array<{ facts: ImageFacts; filename: string }> = [];
  const seen = new Set<string>();
  // info reads the header only: a data file named at open time changes nothing it prints.
  let image = imageName(file, a.flags.has('imageOpts'), false, true);
  fmt ??= image.format;
  let { path, display } = image;
  // qemu-img's collect_image_info_list: each backing file by its full name, in the format the
  // image records (else the format of the one before), a name seen twice is a loop.
  while (file !== undefined) {
    if (seen.has(display)) fail(`Backing file '${display}' creates an infinite loop.`);
    seen.add(display);
    let facts: ImageFacts;
    try {
      facts = await engineFor(image).info(path, { forceShare: a.flags.has('forceShare'), format: fmt === 'raw' || fmt === 'qcow2' ? fmt : 'probe' });
    } catch (e) {
      fail(`Could not open '${file}': ${messageOf(e)}`);
    }
    // The backing name resolved against the name qemu-img prints (`./a:b` -> `./base`).
    if (facts.backingFile !== undefined && facts.detail) facts.detail.fullBackingFile = resolveBackingName(display, facts.backingFile);
    chain.push({ facts, filename: display });
    if (!a.flags.has('chain') || facts.backingFile === undefined || facts.backingFile === '') break;
    file = facts.detail?.fullBackingFile ?? facts.backingFile;
    // A backing file of an image on a remote host is on that host.
    const next = imageName(file);
    image = next.remote === undefined && image.remote !== undefined ? { ...next, remote: image.remote } : next;
    ({ path, display } = image);
    if (facts.backingFormat !== undefined) {
      fmt = facts.backingFormat;
      requireQcow2OrRaw(fmt);
    }
  }
  if (!a.flags.has('chain')) {
    const { facts, filename } = chain[0]!;
    out(output === 'json' ? infoJsonText(facts, filename) + '\n' : infoHumanText(facts, filename));
  } else {
    out(output === 'json' ? infoChainJsonText(chain) + '\n' : chain.map(({ facts, filename }) => infoHumanText(facts, filename)).join('\n'));
  }
}
