// What qemu-img's read/write open of a dirty image prints: QEMU repairs an image whose lazy
// refcounts were left stale (check -r all) when it opens it for writing, and says so on stderr.
// The commands that change images run this first.

import { Qcow2Error } from '../model/errors';
import { engineFor } from './engine';
import { err } from './io';
import type { ImageName } from './names';

/**
 * Repair FILE if it is dirty, printing QEMU's lines. Anything else that fails here (a missing
 * or corrupt image) is left for the command itself to report in its own words.
 */
export async function repairDirtyFirst(image: ImageName): Promise<void> {
  let lines: string[];
  try {
    lines = await engineFor(image).repairDirty(image.path);
  } catch (e) {
    if (Qcow2Error.isInstance(e) && /Could not repair dirty image/.test(e.message)) throw e;
    return;
  }
  for (const l of lines) err(`${l}\n`);
}
