// Which process holds an image: the QEMU (VM, storage daemon, qemu-nbd) behind QEMU's image
// locks, named for refusals such as "stop the VM first". OFD locks report no owner through
// fcntl (F_OFD_GETLK answers l_pid = -1), so the holder is found through /proc/<pid>/fdinfo
// (findLockHolders); this adds the process's name. Linux, this machine only.

import * as fs from 'fs';
import * as path from 'path';
import { findLockHolders, Permission } from '../../qcow2/io/lock';

/** A process holding QEMU lock bytes on an image. */
export interface ImageHolder {
  /** Its pid; undefined when /proc does not let us see whose the locks are (another user's process). */
  pid?: number;
  /** Its program's name, from argv[0] ("qemu-system-x86_64") or /proc/<pid>/comm. */
  command?: string;
  /** Permissions it uses ("write" means it may change the image at any moment). */
  uses: Permission[];
  /** Permissions it refuses to share. */
  refusesToShare: Permission[];
}

function commandOf(pid: number): string | undefined {
  try {
    const argv0 = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0];
    if (argv0 !== undefined && argv0 !== '') return path.basename(argv0);
  } catch {
    /* gone, or not ours to read */
  }
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * The processes other than this one that hold QEMU's lock bytes on `imagePath`, one entry per
 * process. Empty when nobody does (or off Linux).
 */
export function imageHolders(imagePath: string): ImageHolder[] {
  const byPid = new Map<number | undefined, ImageHolder>();
  for (const h of findLockHolders(imagePath)) {
    if (h.pid === process.pid) continue;
    const known = byPid.get(h.pid);
    if (known !== undefined) {
      known.uses = [...new Set([...known.uses, ...h.uses])];
      known.refusesToShare = [...new Set([...known.refusesToShare, ...h.refusesToShare])];
      continue;
    }
    const holder: ImageHolder = { uses: [...h.uses], refusesToShare: [...h.refusesToShare] };
    if (h.pid !== undefined) {
      holder.pid = h.pid;
      const cmd = commandOf(h.pid);
      if (cmd !== undefined) holder.command = cmd;
    }
    byPid.set(h.pid, holder);
  }
  return [...byPid.values()];
}

/** "process 4242 (qemu-system-x86_64)", or "another user's process" when the pid is hidden. */
export function describeHolder(h: ImageHolder): string {
  if (h.pid === undefined) return "another user's process";
  return h.command !== undefined ? `process ${h.pid} (${h.command})` : `process ${h.pid}`;
}
