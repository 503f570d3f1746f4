// The block-layer QMP commands this provider uses, typed: what QEMU has open (query-block,
// query-named-block-nodes), which node holds a given image file, live resize, and persistent
// dirty bitmaps. Sizes and counts are bigint (QEMU's int64).
//
// Finding an image: QEMU reports each node's file name as it was given (a symlink, a relative
// name) or, when the node's options cannot be written as a file name, as "json:{...}" with the
// whole option tree. We take the qcow2 nodes, extract the protocol file name from either form,
// and compare files by identity (real path, then device and inode), never by spelling.

import * as fs from 'fs';
import * as path from 'path';
import { Qcow2Error } from '../../model/errors';
import { QmpClient } from './client';
import { parseJson, QmpObject, QmpValue } from './json';

/** A dirty bitmap as QEMU reports it (BlockDirtyInfo). */
export interface DirtyBitmapInfo {
  name: string;
  /** Bytes covered by one bit. */
  granularity: number;
  /** Whether writes are being recorded (enabled and not frozen by a job). */
  recording: boolean;
  /** In use by an operation (a backup job, an NBD export): most commands refuse it. */
  busy: boolean;
  /** Stored in the image when QEMU closes it (and kept as `in-use` while open). */
  persistent: boolean;
  /** Loaded from an image where it was `in-use` (its writer died): its contents are not trustworthy. */
  inconsistent: boolean;
  /** Dirty bytes (bits set × granularity, clipped to the disk's end). */
  count: bigint;
}

/** A block node (BlockDeviceInfo, from query-named-block-nodes or query-block's "inserted"). */
export interface BlockNode {
  nodeName: string;
  /** The block driver: "qcow2", "raw", "file", "throttle", ... */
  driver: string;
  /** The node's file name as QEMU reports it (may be "json:{...}"). */
  file: string;
  readOnly: boolean;
  /** The node's size in bytes (the guest-visible size for a format node). */
  virtualSize: bigint;
  /** Bytes the image file occupies on the host, when QEMU reports it. */
  actualSize?: bigint;
  /** Dirty bitmaps on this node. */
  dirtyBitmaps: DirtyBitmapInfo[];
  /** The raw record, for fields not typed here. */
  raw: QmpObject;
}

/** A guest device (BlockInfo from query-block). A storage daemon has none; a VM has one per disk. */
export interface BlockDevice {
  /** The drive name ("" for -blockdev/-device disks). */
  device: string;
  /** The guest device's qdev id or path. */
  qdev?: string;
  /** The node the device reads and writes, when a medium is inserted. */
  inserted?: BlockNode;
}

function asObject(v: QmpValue | undefined): QmpObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && typeof v !== 'bigint' ? v : {};
}

function asBig(v: QmpValue | undefined): bigint {
  return typeof v === 'bigint' ? v : typeof v === 'number' ? BigInt(Math.trunc(v)) : 0n;
}

function asString(v: QmpValue | undefined): string {
  return typeof v === 'string' ? v : '';
}

function parseBitmap(v: QmpValue): DirtyBitmapInfo {
  const o = asObject(v);
  return {
    name: asString(o.name),
    granularity: Number(o.granularity ?? 0),
    recording: o.recording === true,
    busy: o.busy === true,
    persistent: o.persistent === true,
    inconsistent: o.inconsistent === true,
    count: asBig(o.count),
  };
}

function parseNode(v: QmpValue): BlockNode {
  const o = asObject(v);
  const image = asObject(o.image);
  const node: BlockNode = {
    nodeName: asString(o['node-name']),
    driver: asString(o.drv),
    file: asString(o.file),
    readOnly: o.ro === true,
    virtualSize: asBig(image['virtual-size']),
    dirtyBitmaps: Array.isArray(o['dirty-bitmaps']) ? o['dirty-bitmaps'].map(parseBitmap) : [],
    raw: o,
  };
  if (image['actual-size'] !== undefined) node.actualSize = asBig(image['actual-size']);
  return node;
}

/** query-block: the guest's block devices and the nodes inserted in them. */
export async function queryBlock(qmp: QmpClient): Promise<BlockDevice[]> {
  const r = await qmp.execute('query-block');
  return (Array.isArray(r) ? r : []).map((v) => {
    const o = asObject(v);
    const d: BlockDevice = { device: asString(o.device) };
    if (typeof o.qdev === 'string') d.qdev = o.qdev;
    if (o.inserted !== undefined) d.inserted = parseNode(o.inserted);
    return d;
  });
}

/** query-named-block-nodes (flat): every node in QEMU's block graph, protocol nodes included. */
export async function queryNamedBlockNodes(qmp: QmpClient): Promise<BlockNode[]> {
  const r = await qmp.execute('query-named-block-nodes', { flat: true });
  return (Array.isArray(r) ? r : []).map(parseNode);
}

/**
 * The protocol-level file name under a node's reported file name: the name itself when it is a
 * plain path; for "json:{...}", the "filename" of the innermost "file" child below the first
 * node of driver `format` (or below the top when `format` is not in the tree). Undefined when
 * it names no file (a node reference, an NBD server...).
 */
export function imageFileName(reported: string, format = 'qcow2'): string | undefined {
  if (!reported.startsWith('json:')) return reported === '' ? undefined : reported;
  let tree: QmpValue;
  try {
    tree = parseJson(reported.slice(5));
  } catch {
    return undefined;
  }
  let o = asObject(tree);
  // Descend through filters (throttle, copy-on-read...) to the format node, when there is one.
  for (let d: QmpObject | undefined = o; d !== undefined; d = typeof d.file === 'object' ? asObject(d.file) : undefined) {
    if (d.driver === format) {
      o = d;
      break;
    }
  }
  for (let d: QmpObject = o; ; ) {
    const child = d.file;
    if (typeof child === 'object' && child !== null && !Array.isArray(child)) {
      d = asObject(child);
      continue;
    }
    if (d !== o && typeof d.filename === 'string') return d.filename;
    return undefined;
  }
}

/** What makes two names the same file. */
export interface FileIdentity {
  realpath: string;
  dev: bigint;
  ino: bigint;
}

/** Resolve a name to its file's identity (undefined when it does not exist from here). */
export type Identify = (name: string) => Promise<FileIdentity | undefined>;

/** Identity on this machine: realpath and stat. */
export const identifyLocal: Identify = async (name) => {
  try {
    const real = await fs.promises.realpath(name);
    const st = await fs.promises.stat(real, { bigint: true });
    return { realpath: real, dev: st.dev, ino: st.ino };
  } catch {
    return undefined;
  }
};

export interface FindNodeOptions {
  /** How to resolve names to files; default identifyLocal. A remote host passes its own. */
  identify?: Identify;
  /** The format driver of the node sought. Default "qcow2". */
  format?: string;
  /** QEMU's working directory, to resolve file names it reports relative (unknown: they never match). */
  qemuCwd?: string;
}

/**
 * The `format` node (default qcow2) whose image file is `imagePath`, compared by real path and by
 * device/inode. Rejects with NOT_FOUND listing what QEMU has open when none is, and with
 * INVALID_IMAGE when several nodes have it open.
 */
export async function findNodeByImage(qmp: QmpClient, imagePath: string, opts: FindNodeOptions = {}): Promise<BlockNode> {
  const identify = opts.identify ?? identifyLocal;
  const format = opts.format ?? 'qcow2';
  const target = await identify(imagePath);
  if (target === undefined) {
    throw new Qcow2Error('NOT_FOUND', `${imagePath} does not exist: cannot look for it among the images of ${qmp.where}`, { file: imagePath });
  }
  const nodes = await queryNamedBlockNodes(qmp);
  const formatNodes = nodes.filter((n) => n.driver === format);
  const matches: BlockNode[] = [];
  for (const n of formatNodes) {
    let name = imageFileName(n.file, format);
    if (name === undefined) continue;
    if (!path.isAbsolute(name)) {
      if (opts.qemuCwd === undefined) continue;
      name = path.resolve(opts.qemuCwd, name);
    }
    if (name === target.realpath) {
      matches.push(n);
      continue;
    }
    const id = await identify(name);
    if (id !== undefined && (id.realpath === target.realpath || (id.dev === target.dev && id.ino === target.ino))) matches.push(n);
  }
  if (matches.length === 1) return matches[0]!;
  if (matches.length > 1) {
    throw new Qcow2Error(
      'INVALID_IMAGE',
      `${qmp.where} has ${imagePath} open in ${matches.length} ${format} nodes (${matches.map((m) => `'${m.nodeName}'`).join(', ')}): ` +
        `refusing to guess which one the guest uses`,
      { file: imagePath },
    );
  }
  const open = formatNodes.map((n) => `'${n.nodeName}' (${imageFileName(n.file, format) ?? n.file})`);
  throw new Qcow2Error(
    'NOT_FOUND',
    `${qmp.where} does not have ${imagePath} open (its ${format} nodes: ${open.length > 0 ? open.join(', ') : 'none'}): ` +
      `give the QMP socket of the QEMU process that holds this image`,
    { file: imagePath },
  );
}

/** Grow (or shrink) a node's guest-visible size; `size` in bytes, a multiple of 512. */
export async function blockResize(qmp: QmpClient, nodeName: string, size: bigint): Promise<void> {
  await qmp.execute('block_resize', { 'node-name': nodeName, size });
}

export interface AddBitmapOptions {
  /** Bytes per bit, a power of two from 512 to 2 GiB; QEMU's default depends on the cluster size (64 KiB for qcow2 defaults). */
  granularity?: number;
  /** Store it in the image (default true: a bitmap that dies with the process is of no use here). */
  persistent?: boolean;
  /** Create it not recording (default false). */
  disabled?: boolean;
}

/** block-dirty-bitmap-add. */
export async function addBitmap(qmp: QmpClient, node: string, name: string, opts: AddBitmapOptions = {}): Promise<void> {
  await qmp.execute('block-dirty-bitmap-add', {
    node,
    name,
    ...(opts.granularity !== undefined ? { granularity: opts.granularity } : {}),
    persistent: opts.persistent ?? true,
    ...(opts.disabled !== undefined ? { disabled: opts.disabled } : {}),
  });
}

/** block-dirty-bitmap-remove: a persistent bitmap is removed from the image at once. */
export async function removeBitmap(qmp: QmpClient, node: string, name: string): Promise<void> {
  await qmp.execute('block-dirty-bitmap-remove', { node, name });
}

/** block-dirty-bitmap-enable: start recording writes. */
export async function enableBitmap(qmp: QmpClient, node: string, name: string): Promise<void> {
  await qmp.execute('block-dirty-bitmap-enable', { node, name });
}

/** block-dirty-bitmap-disable: stop recording writes. */
export async function disableBitmap(qmp: QmpClient, node: string, name: string): Promise<void> {
  await qmp.execute('block-dirty-bitmap-disable', { node, name });
}

/** block-dirty-bitmap-clear: forget every recorded write. */
export async function clearBitmap(qmp: QmpClient, node: string, name: string): Promise<void> {
  await qmp.execute('block-dirty-bitmap-clear', { node, name });
}

/** A merge source: a bitmap of the same node by name, or of another node. */
export type BitmapRef = string | { node: string; name: string };

/** block-dirty-bitmap-merge: OR the sources into `target`. */
export async function mergeBitmaps(qmp: QmpClient, node: string, target: string, sources: readonly BitmapRef[]): Promise<void> {
  await qmp.execute('block-dirty-bitmap-merge', { node, target, bitmaps: sources.map((s) => (typeof s === 'string' ? s : { node: s.node, name: s.name })) });
}

/** The dirty bitmaps of `nodeName` (from query-named-block-nodes). Rejects NOT_FOUND for an unknown node. */
export async function queryDirtyBitmaps(qmp: QmpClient, nodeName: string): Promise<DirtyBitmapInfo[]> {
  const node = (await queryNamedBlockNodes(qmp)).find((n) => n.nodeName === nodeName);
  if (node === undefined) throw new Qcow2Error('NOT_FOUND', `${qmp.where} has no block node named '${nodeName}'`);
  return node.dirtyBitmaps;
}
