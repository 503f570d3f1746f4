// The snapshot table as qemu-img prints it (bdrv_snapshot_dump), for `info` and `snapshot -l`:
// the header `%-10s%-17s%8s%20s%13s%11s`, each row `%-9s %-16s %8s%20s%13s%11s`, the date in
// local time, the VM clock as HH:MM:SS.mmm, the icount only when recorded.

import type { SnapshotFacts } from '../../model/facts';
import { formatSize } from '../../model/size';

const left = (s: string, w: number) => s.padEnd(w);
const right = (s: string, w: number) => s.padStart(w);
const pad = (n: number | bigint, w = 2) => String(n).padStart(w, '0');

function dateOf(sec: number): string {
  const d = new Date(sec * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function clockOf(nsec: bigint): string {
  const secs = nsec / 1_000_000_000n;
  // QEMU prints each part through an int: (int)(secs / 3600) and so on.
  return `${pad(secs / 3600n)}:${pad((secs / 60n) % 60n)}:${pad(secs % 60n)}.${pad((nsec / 1_000_000n) % 1000n, 3)}`;
}

/** `Snapshot list:`, the header and one line per snapshot (each line ends with a newline). */
export function snapshotListText(list: readonly SnapshotFacts[]): string {
  let out = 'Snapshot list:\n';
  out += `${left('ID', 10)}${left('TAG', 17)}${right('VM SIZE', 8)}${right('DATE', 20)}${right('VM CLOCK', 13)}${right('ICOUNT', 11)}\n`;
  for (const s of list) {
    const icount = s.icount === undefined ? '' : BigInt.asIntN(64, s.icount).toString();
    out += `${left(s.id, 9)} ${left(s.name, 16)} ${right(formatSize(s.vmStateSize), 8)}${right(dateOf(s.dateSec), 20)}` +
      `${right(clockOf(s.vmClockNsec), 13)}${right(icount, 11)}\n`;
  }
  return out;
}
