// `qcow2 commit [-q] [-f qcow2] [-b BASE] [-d] [-p] FILE`: write FILE's data into its backing
// file (or BASE, further down its chain), then empty FILE unless -d (-b implies -d), as
// qemu-img commit does. It writes into a file the image's own chain names: the base.

import { getopt, requireQcow2 } from '../args';
import { cliEngine, localFile } from '../engine';
import { fail, failOn } from '../report';
import { out } from '../io';
import { qemuProgress } from '../render/progress';
import { repairDirtyFirst } from '../dirty';
import type { CommitRequest } from '../../rules/types';
import { parseSize } from '../../model/size';

export const usage = 'commit [-q] [-f qcow2] [-b BASE] [-d] [-p] FILE';
export const description = "write the image's data into its backing file (-b: a file further down its chain), then empty it unless -d";

export async function run(argv: string[]): Promise<void> {
  const { opts, positional } = getopt(argv, 'f:ht:b:dpqr:', { help: false, object: true, 'image-opts': false });
  const request: CommitRequest = {};
  let format: string | undefined, progress = false, quiet = false;
  for (const [k, v] of opts) {
    if (k === 'f') format = v;
    else if (k === 'b') { request.base = v!; request.keep = true; }
    else if (k === 'd') request.keep = true;
    else if (k === 'p') progress = true;
    else if (k === 'q') quiet = true;
    else if (k === 'r') {
      // The rate limit is accepted (qemu-img's syntax) and has no effect: commit runs at full speed.
      try { parseSize(v!); } catch { fail(`Invalid rate limit specified: ${v}`); }
    } else if (k === 'object' || k === 'image-opts') {
      fail(`--${k} is not supported: this tool opens image files by name`);
    }
  }
  if (positional.length !== 1) fail('Expecting one image file name');
  const file = positional[0]!;
  requireQcow2(format);
  const bar = progress && !quiet ? qemuProgress() : undefined;
  try {
    await repairDirtyFirst(localFile(file, 'commit'));
    await cliEngine().commit(file, request, bar ? { progress: (d, t) => bar.update(t ? (d * 100) / t : 100) } : {});
  } catch (e) {
    bar?.end();
    failOn(e, file);
  }
  bar?.end();
  if (!quiet) out('Image committed.\n');
}
