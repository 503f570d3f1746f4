// The command line's one way of reporting: qemu-img's `PROG: [FILE: ]message` lines on stderr,
// then an exit status. Commands throw; main() turns what they throw into output and a status.

import { Qcow2Error } from '../model/errors';
import { err } from './io';

export const PROG = 'qcow2';

/** Thrown to end the command with a status after its output was written. */
export class Exit extends Error {
  constructor(readonly code: number) { super(`exit ${code}`); }
}

/** `qcow2: [FILE: ]first line`, further lines bare (qemu-img's error_report of a multi-line message). */
export function report(lines: string, file?: string): void {
  const [first, ...rest] = lines.split('\n');
  err(`${PROG}: ${file !== undefined ? `${file}: ` : ''}${first}\n`);
  for (const l of rest) err(`${l}\n`);
}

/** Every line prefixed (qemu-img prints such messages as separate error_reports). */
export function reportEach(lines: string): void {
  for (const l of lines.split('\n')) err(`${PROG}: ${l}\n`);
}

export function warn(message: string): void {
  err(`${PROG}: warning: ${message}\n`);
}

/** Report and end with status 1. */
export function fail(message: string, file?: string): never {
  report(message, file);
  throw new Exit(1);
}

/** qemu-img prefixes open failures with `Could not open 'FILE': `; refusals stand alone. */
export function openPrefix(e: unknown, file: string): string {
  return Qcow2Error.isInstance(e) && (e.code === 'INVALID_IMAGE' || e.code === 'UNSUPPORTED' || e.code === 'NOT_FOUND' || e.code === 'LOCKED')
    ? `Could not open '${file}': ` : '';
}

/** An operation on FILE failed: report it as qemu-img would and end with status 1. */
export function failOn(e: unknown, file: string): never {
  if (e instanceof Exit) throw e;
  fail(openPrefix(e, file) + messageOf(e));
}

/** The message of anything thrown: never a stack trace. */
export function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
