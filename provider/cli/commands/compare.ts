// `qcow2 compare [-f FMT] [-F FMT] [-p] [-q] [-s] [-U] FILE1 FILE2`: compare two images' guest
// views (raw or qcow2, each through its backing chain), as qemu-img compare does: exit 0 when
// identical, 1 when they differ (the first differing offset printed), 2 when an image cannot be
// opened.

import { getopt } from '../args';
import { cliEngine, localFile } from '../engine';
import { Exit, fail, messageOf, openPrefix, report } from '../report';
import { out } from '../io';
import { qemuProgress } from '../render/progress';
import type { ImageRef } from '../../engines/engine';

export const usage = 'compare [-f FMT] [-F FMT] [-p] [-q] [-s] [-U] FILE1 FILE2';
export const description = 'compare two images (raw or qcow2, through their backing chains); exit 0 identical, 1 different, 2 error; -s strict';

export async function run(argv: string[]): Promise<void> {
  const { opts, positional } = getopt(argv, 'hf:F:T:pqsU', { help: false, object: true, 'image-opts': false, 'force-share': false });
  let fmt1: string | undefined, fmt2: string | undefined;
  let progress = false, quiet = false, strict = false, forceShare = false;
  for (const [k, v] of opts) {
    if (k === 'f') fmt1 = v;
    else if (k === 'F') fmt2 = v;
    else if (k === 'p') progress = true;
    else if (k === 'q') quiet = true;
    else if (k === 's') strict = true;
    else if (k === 'U' || k === 'force-share') forceShare = true;
    else if (k === 'object' || k === 'image-opts') fail(`--${k} is not supported: this tool opens image files by name`);
  }
  if (positional.length !== 2) fail('Expecting two image file names');
  const [f1, f2] = positional as [string, string];
  for (const [f, fmt] of [[f1, fmt1], [f2, fmt2]] as const) {
    if (fmt !== undefined && fmt !== 'raw' && fmt !== 'qcow2') {
      report(`Could not open '${f}': Unknown driver '${fmt}': this tool reads raw and qcow2 images only`);
      throw new Exit(2);
    }
  }
  const a: ImageRef = fmt1 !== undefined ? { path: f1, format: fmt1 } : { path: f1 };
  const b: ImageRef = fmt2 !== undefined ? { path: f2, format: fmt2 } : { path: f2 };
  const bar = progress && !quiet ? qemuProgress() : undefined;
  let r;
  try {
    localFile(f1, 'compare');
    localFile(f2, 'compare');
    r = await cliEngine().compare(a, b, { strict, forceShare, ...(bar ? { progress: (d: number, t: number) => bar.update(t ? (d * 100) / t : 100) } : {}) });
  } catch (e) {
    bar?.end();
    const file = /'([^']*)'/.exec(messageOf(e))?.[1] === f2 || (e as { file?: string }).file === f2 ? f2 : f1;
    report(openPrefix(e, file) + messageOf(e));
    throw new Exit(2);
  }
  bar?.end();
  if (!quiet) for (const l of r.lines) out(`${l}\n`);
  if (r.status !== 0) throw new Exit(r.status);
}
