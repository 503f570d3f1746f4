// `qcow2 snapshot [-q] [-U] [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] FILE`: list, create,
// apply or delete internal snapshots, as qemu-img snapshot does (a dirty image is repaired
// first, with QEMU's lines, as its read/write open does).

import { getopt } from '../args';
import { cliEngine, localFile } from '../engine';
import { snapshotListText } from '../render/snapshots';
import { Exit, fail, failOn, reportEach } from '../report';
import { Qcow2Error } from '../../model/errors';
import { out } from '../io';
import { repairDirtyFirst } from '../dirty';
import type { SnapshotRequest } from '../../rules/types';

export const usage = 'snapshot [-q] [-U] [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] FILE';
export const description = 'list (-l), create (-c), apply (-a) or delete (-d) internal snapshots';

export async function run(argv: string[]): Promise<void> {
  const { opts, positional } = getopt(argv, 'la:c:d:hqU', { help: false, 'force-share': false, object: true, 'image-opts': false });
  let request: SnapshotRequest | undefined;
  let forceShare = false;
  for (const [k, v] of opts) {
    if (k === 'l' || k === 'a' || k === 'c' || k === 'd') {
      if (request) fail("Cannot mix '-l', '-a', '-c', '-d'");
      request = k === 'l' ? { action: 'list' } : { action: k === 'a' ? 'apply' : k === 'c' ? 'create' : 'delete', name: v! };
    } else if (k === 'U' || k === 'force-share') {
      forceShare = true;
    } else if (k === 'object' || k === 'image-opts') {
      fail(`--${k} is not supported: this tool opens image files by name`);
    }
  }
  if (positional.length !== 1) fail('Expecting one image file name');
  const file = positional[0]!;
  const engine = cliEngine();
  try {
    localFile(file, 'snapshot');
    if (request?.action === 'list') {
      const list = (await engine.snapshot(file, request, { forceShare })) ?? [];
      if (list.length) out(snapshotListText(list));
      return;
    }
    // qemu-img opens the image read/write for everything else (repairing a dirty one).
    await repairDirtyFirst(localFile(file, 'snapshot'));
    if (request) await engine.snapshot(file, request);
  } catch (e) {
    // qemu-img reports a failed snapshot operation as separate error lines, each prefixed.
    if (Qcow2Error.isInstance(e) && e.code === 'REFUSED' && e.property === 'snapshot') {
      reportEach(e.message);
      throw new Exit(1);
    }
    failOn(e, file);
  }
}
