// Changes to an image a running QEMU holds, carried out by that QEMU over QMP: the executor of
// what provider/rules planned `live` (a grow through block_resize, bitmap steps through
// block-dirty-bitmap-*, persistent), and the view of the image QEMU has (its size and its
// bitmaps, which reach the file only when QEMU closes it). Nothing here writes the image file.

import type { BitmapFacts } from '../model/facts';
import type { BitmapStep } from '../rules/types';
import {
  addBitmap, blockResize, BlockNode, clearBitmap, disableBitmap, enableBitmap, findNodeByImage, QmpClient, removeBitmap,
} from '../transport/qmp';

/** What a live change does: the new size (a grow), then the bitmap steps in order. */
export interface LivePlan {
  size?: bigint;
  bitmaps?: readonly BitmapStep[];
}

/** The image as the QEMU holding it sees it. */
export interface LiveView {
  /** The qcow2 node's name in that QEMU. */
  nodeName: string;
  virtualSize: bigint;
  /** Its persistent bitmaps (`in-use` on disk while QEMU has them; `auto` while recording). */
  bitmaps: BitmapFacts[];
}

async function withNode<T>(qmpSocket: string, file: string, fn: (qmp: QmpClient, node: BlockNode) => Promise<T>): Promise<T> {
  const qmp = await QmpClient.connect(qmpSocket, { property: 'qmpSocket' });
  try {
    return await fn(qmp, await findNodeByImage(qmp, file));
  } finally {
    await qmp.close();
  }
}

function viewOf(node: BlockNode): LiveView {
  return {
    nodeName: node.nodeName,
    virtualSize: node.virtualSize,
    // In QEMU's order (newest first), the order it stores them in the image's directory when it closes it.
    bitmaps: node.dirtyBitmaps.filter((b) => b.persistent).map((b) => ({
      name: b.name, granularity: b.granularity, flags: b.recording ? ['in-use', 'auto'] : ['in-use'], inconsistent: b.inconsistent,
    })),
  };
}

/** The size and bitmaps of `file` as the QEMU at `qmpSocket` has them. */
export function liveView(qmpSocket: string, file: string): Promise<LiveView> {
  return withNode(qmpSocket, file, async (_qmp, node) => viewOf(node));
}

/**
 * Carry out `plan` through the QEMU at `qmpSocket` that holds `file`: the grow first, then each
 * bitmap's actions in order. A QMP refusal or a QEMU that goes away stops at that command (what
 * QEMU did before it stays done; QEMU keeps the image consistent); the error names the socket.
 */
export function applyLive(qmpSocket: string, file: string, plan: LivePlan): Promise<LiveView> {
  return withNode(qmpSocket, file, async (qmp, node) => {
    const n = node.nodeName;
    if (plan.size !== undefined) await blockResize(qmp, n, plan.size);
    for (const step of plan.bitmaps ?? []) {
      for (const a of step.actions) {
        switch (a.op) {
          case 'add': await addBitmap(qmp, n, step.name, { persistent: true, ...(a.granularity !== undefined ? { granularity: a.granularity } : {}) }); break;
          case 'remove': await removeBitmap(qmp, n, step.name); break;
          case 'enable': await enableBitmap(qmp, n, step.name); break;
          case 'disable': await disableBitmap(qmp, n, step.name); break;
          case 'clear': await clearBitmap(qmp, n, step.name); break;
          case 'merge': throw new Error(`a live plan has no merge (bitmap '${step.name}')`);
        }
      }
    }
    return viewOf(await findNodeByImage(qmp, file));
  });
}
