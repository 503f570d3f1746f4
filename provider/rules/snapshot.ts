// Internal snapshot legality, in qemu-img 7.2's words (its `snapshot` messages quote the errno
// QEMU's block layer returned): images with an external data file have none, applying one
// would invalidate persistent dirty bitmaps, a name must exist to be deleted or applied.

import type { ImageFacts } from '../model/facts';
import type { Refusal, SnapshotRequest } from './types';

/** QEMU's limit on the number of internal snapshots (QCOW_MAX_SNAPSHOTS). */
export const MAX_SNAPSHOTS = 65536;

/**
 * Validate a snapshot action on an image. `found` is whether the engine found the named
 * snapshot (by name for delete, by id or name for apply).
 */
export function validateSnapshot(state: ImageFacts, req: SnapshotRequest, found: boolean): Refusal | undefined {
  switch (req.action) {
    case 'list':
      return undefined;
    case 'create':
      if (state.hasDataFile) return { property: 'snapshot', message: `Could not create snapshot '${req.name}': -95 (Operation not supported)` };
      if (state.snapshots >= MAX_SNAPSHOTS) return { property: 'snapshot', message: `Could not create snapshot '${req.name}': -27 (File too large)` };
      return undefined;
    case 'delete':
      if (state.hasDataFile || !found) return { property: 'snapshot', message: `Could not delete snapshot '${req.name}': snapshot not found` };
      return undefined;
    case 'apply':
      if (state.bitmaps.length) return { property: 'snapshot', message: `Could not apply snapshot '${req.name}': Device has active dirty bitmaps` };
      if (state.hasDataFile) return { property: 'snapshot', message: `Could not apply snapshot '${req.name}': Failed to load snapshot: Operation not supported` };
      if (!found) return { property: 'snapshot', message: `Could not apply snapshot '${req.name}': Failed to load snapshot: No such file or directory` };
      return undefined;
  }
}

/**
 * A snapshot needs one more reference to every cluster the image reaches; qemu-img fails with
 * the errno of qcow2_update_snapshot_refcount: EINVAL when a refcount would exceed its width
 * (refcount_bits=1 cannot hold a snapshot of allocated data), EFBIG and EAGAIN when a table
 * points past what the refcount table describes (a broken image: check -r all repairs it).
 * `failure` is what the engine found.
 */
export function validateSnapshotRefcounts(name: string, failure: 'overflow' | 'efbig' | 'eagain' | undefined): Refusal | undefined {
  if (failure === undefined) return undefined;
  if (failure === 'overflow') return { property: 'refcount_bits', message: `Could not create snapshot '${name}': -22 (Invalid argument)` };
  return { property: 'snapshot', message: `Could not create snapshot '${name}': ${failure === 'efbig' ? '-27 (File too large)' : '-11 (Resource temporarily unavailable)'}` };
}
