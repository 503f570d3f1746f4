// Where the command line's output goes: file descriptors 1 and 2, written synchronously (not
// through process.stdout, whose stream machinery costs a short command more than its work), or
// the sinks a caller running main() in-process hands over.

import { fstatSync, Stats, statSync, writeSync } from 'fs';

export interface Io {
  out(text: string): void;
  err(text: string): void;
}

/**
 * The reader of standard output went away (`qcow2 map img | head -1`). qemu-img dies of SIGPIPE
 * there, silently; Node ignores the signal, so the command ends here instead: main() exits with
 * the status a shell shows for SIGPIPE (128 + 13), printing nothing.
 */
export class BrokenPipe extends Error {
  constructor() { super('standard output was closed'); }
}

export const BROKEN_PIPE_STATUS = 141;

function writeAll(fd: number, text: string | Buffer): void {
  const buf = typeof text === 'string' ? Buffer.from(text, 'utf8') : text;
  for (let off = 0; off < buf.length;) {
    try {
      off += writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      // Standard error closed too: there is nobody left to tell.
      if (code === 'EPIPE') {
        if (fd === 2) return;
        throw new BrokenPipe();
      }
      // A non-blocking pipe that is full: wait for the reader, then go on.
      if (code !== 'EAGAIN') throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
  }
}

/**
 * Standard output in the order qemu-img's C stdio gives it. To a terminal it is written at once
 * (glibc buffers it by line; our writes are whole lines). To a pipe or a file glibc buffers it in
 * blocks of the descriptor's st_blksize (4096 bytes), flushed when full and at exit, while
 * standard error is not buffered: a script that captures both (`2>&1`) sees qemu-img's stderr
 * first and its stdout after it (check -r's repair lines before its summary). The same here:
 * whole 4096-byte blocks as they fill, the rest by flushOut() (at the command's end, and where
 * qemu-img flushes: its progress lines).
 */
const STDOUT_BLOCK = 4096;
let stdoutBlocks: boolean | undefined;
let pendingOut = Buffer.alloc(0);

/**
 * isatty(3) of a descriptor. A terminal is a character device, so anything else (a pipe, a file:
 * where a script or benchmark sends the output), and /dev/null, is answered by fstat alone,
 * without loading Node's tty module, which brings net and the stream machinery with it (3-4 ms
 * of a command).
 */
export function isTerminal(fd: number): boolean {
  let st: Stats;
  try {
    st = fstatSync(fd);
  } catch {
    return false; // closed
  }
  if (!st.isCharacterDevice()) return false;
  try {
    if (st.rdev === statSync('/dev/null').rdev) return false;
  } catch {
    // no /dev/null here: isatty decides
  }
  return (require('tty') as typeof import('tty')).isatty(fd);
}

function writeOut(text: string): void {
  stdoutBlocks ??= !isTerminal(1);
  if (!stdoutBlocks) {
    writeAll(1, text);
    return;
  }
  pendingOut = Buffer.concat([pendingOut, Buffer.from(text, 'utf8')]);
  if (pendingOut.length < STDOUT_BLOCK) return;
  const n = pendingOut.length - (pendingOut.length % STDOUT_BLOCK);
  const full = pendingOut.subarray(0, n);
  pendingOut = pendingOut.subarray(n);
  writeAll(1, full);
}

/** Write what standard output holds back (fflush(stdout)); throws BrokenPipe as out() does. */
export function flushOut(): void {
  if (current !== FD_IO || pendingOut.length === 0) return;
  const rest = pendingOut;
  pendingOut = Buffer.alloc(0);
  writeAll(1, rest);
}

export const FD_IO: Io = { out: writeOut, err: (t) => writeAll(2, t) };

let current: Io = FD_IO;

/** Write to standard output. */
export function out(text: string): void {
  current.out(text);
}

/** Write to standard error. */
export function err(text: string): void {
  current.err(text);
}

/** Use `io` until `fn` settles. */
export async function withIo<T>(io: Io, fn: () => Promise<T>): Promise<T> {
  const prev = current;
  current = io;
  try {
    return await fn();
  } finally {
    current = prev;
  }
}

const endings: Array<() => Promise<unknown>> = [];

/** Run `fn` when the command has ended (main awaits it before the process exits). */
export function atEnd(fn: () => Promise<unknown>): void {
  endings.push(fn);
}

/** Run what atEnd collected (errors there are not the command's). */
export async function runEndings(): Promise<void> {
  for (const fn of endings.splice(0)) await fn().catch(() => undefined);
}
