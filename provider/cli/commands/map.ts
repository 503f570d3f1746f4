// `qcow2 map [-f qcow2|raw] [--output=human|json] [-U] FILE`: the allocation map through the backing
// chain, as qemu-img map prints it.

import { parseReadArgs } from '../args';
import { engineFor } from '../engine';
import { mapHumanText, mapJsonText } from '../render/map';
import { fail, failOn } from '../report';
import { out } from '../io';

export const usage = 'map [-f qcow2|raw] [--output=human|json] [-U] FILE';
export const description = 'show the allocation map of an image through its backing chain (qemu-img map)';

export async function run(argv: string[]): Promise<void> {
  const { file, image, path, output: fmt, forceShare, format } = parseReadArgs(argv);
  let entries;
  try {
    entries = await engineFor(image).map(path, { forceShare, format: format ?? 'probe' });
  } catch (e) {
    failOn(e, file);
  }
  if (fmt === 'json') {
    out(mapJsonText(entries));
    return;
  }
  const { text, refusal } = mapHumanText(entries);
  out(text);
  if (refusal !== undefined) fail(refusal); // qemu-img's refusal to print compressed clusters: no file prefix
}
