// `-p` progress as qemu-img 7.2 prints it (util/qemu-progress.c, simple mode): on standard
// output, terminal or not, `    (%3.2f/100%)\r` when the figure moved by more than 1 point
// (and at 0 and 100), a final `    (100.00/100%)\r` and a newline at the end.

import { flushOut, out } from '../io';

export interface Progress {
  /** A percentage from 0 to 100. */
  update(percent: number): void;
  /** The final 100% and the newline. */
  end(): void;
}

const line = (p: number) => `    (${fixed2(p)}/100%)\r`;

/**
 * printf's %.2f: the exact value rounded, a tie to even (3.125 prints 3.12; toFixed gives 3.13).
 * The figures are floats (24 bits), so p * 100 is exact in a double and a tie is seen exactly.
 */
function fixed2(p: number): string {
  const s = p * 100;
  const f = Math.floor(s);
  const d = s - f;
  const n = d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f;
  return (n / 100).toFixed(2);
}

/**
 * `exact`: qemu_progress_print's own rule, which prints 0 and 100 every time they come (amend
 * reports each step as QEMU does); otherwise a repeated 100 is printed once.
 */
export function qemuProgress(exact = false): Progress {
  let last = 0;
  // qemu_progress_print flushes standard output after each line (see io.ts flushOut).
  const print = (text: string) => { out(text); flushOut(); };
  print(line(0));
  return {
    update(percent) {
      const p = Math.max(0, Math.min(100, percent));
      if (p > last + 1 || p < last - 1 || (p === 100 && (exact || last !== 100)) || (exact && p === 0)) {
        last = p;
        print(line(p));
      }
    },
    end() {
      print(`${line(100)}\n`);
    },
  };
}
