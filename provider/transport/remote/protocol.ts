// What crosses the bridge (transport/bridge.ts) when the format engine, in a worker thread, works
// on a remote host's files: one call per HostFs or BlockFile method (provider/qcow2/io/hostfs.ts),
// its arguments plain data, bulk bytes (a read's or a write's) in the bridge's shared buffer. The
// first argument of every call is the target's id, which the main thread maps to the connection
// that serves it (transport/ssh/remote-fs.ts). Files are named by handles the main thread issues.

/** The calls, by bridge method name. */
export const REMOTE_FS_METHODS = [
  'open', 'read', 'write', 'truncate', 'sync', 'close', 'allocated', 'extents',
  'stat', 'link', 'rename', 'unlink', 'readdir', 'mkdir', 'mkdtemp', 'removeTree', 'fsyncDir',
  'lock', 'lockChange', 'unlock', 'probeLock', 'identity',
] as const;

export type RemoteFsMethod = typeof REMOTE_FS_METHODS[number];

/** What `open` answers; the first bytes of the file (up to its first cluster) come as the call's data. */
export interface OpenAnswer {
  handle: number;
  size: number;
  /** Bytes allocated on the medium, when known at open (read-only opens). */
  allocated?: number;
  /** The file's identity ("dev:ino"), when known at open (read-only opens, through the host helper). */
  id?: string;
}

/** What `lock` and `lockChange` answer. */
export interface LockAnswer {
  id: number;
  bytes: number[];
}

/** How many bytes an open brings along (a qcow2 image's first cluster, at the default cluster size). */
export const OPEN_HEAD_BYTES = 64 * 1024;
