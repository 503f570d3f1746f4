// `-p` progress as qemu-img 7.2 prints it (util/qemu-progress.c, simple mode): on standard
// output, terminal or not, `    (%3.2f/100%)\r` when the figure moved by more than 1 point
// (and at 0 and 100), a final `    (100.00/100%)\r` and a newline at the end.

import { out } from '../io';

export interface Progress {
  /** A percentage from 0 to 100. */
  update(percent: number): void;
  /** The final 100% and the newline. */
  end(): void;
}

const line = (p: number) => `    (${p.toFixed(2)}/100%)\r`;

export function qemuProgress(): Progress {
  let last = 0;
  out(line(0));
  return {
    update(percent) {
      const p = Math.max(0, Math.min(100, percent));
      if (p > last + 1 || p < last - 1 || (p === 100 && last !== 100)) {
        last = p;
        out(line(p));
      }
    },
    end() {
      out(`${line(100)}\n`);
    },
  };
}
