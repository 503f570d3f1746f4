// qemu-img's messages and exit statuses mapped onto Qcow2Error codes. The message kept is
// qemu-img's own reason, without the `qemu-img: Could not open '<json spec>': ` wrapper (the
// wrapper names our json: specification, not the caller's file), so that the words match what
// the native engine reports for the same cause (provider/format mirrors qemu's messages).

import * as path from 'path';
import { Qcow2Error, Qcow2ErrorCode } from '../../model/errors';
import type { Limits, RunResult } from './run';

export interface ErrorContext {
  /** The qemu-img subcommand (create, amend, info, ...). */
  command: string;
  /** The image argument passed to qemu-img (a json: specification or a plain name). */
  arg?: string;
  /** The image path as the caller gave it: lock messages name it, as the native engine does. */
  file?: string;
  limits?: Limits;
}

/** The stderr text without `qemu-img: ` and `Could not open '<arg>': ` wrappers. */
export function coreMessage(stderr: string, arg?: string): string {
  let s = stderr.replace(/\r/g, '').replace(/\n+$/, '');
  // Warnings (deprecations) are not the error.
  s = s.split('\n').filter((l) => !/^qemu-img: warning: /.test(l)).join('\n');
  s = s.replace(/^qemu-img: /gm, '');
  if (arg !== undefined) {
    for (const prefix of [`Could not open '${arg}': `, `Could not open '${arg}'`]) {
      if (s.startsWith(prefix)) {
        s = s.slice(prefix.length).replace(/^: /, '');
        break;
      }
    }
  }
  return s.trim();
}

/** qemu's "Could not update qcow2 header" / "Failed to update the image header": cluster 0 is full. */
const HEADER_FULL = /(Could not update qcow2 header|Failed to update the image header): No space left on device/;

const RULES: ReadonlyArray<[RegExp, Qcow2ErrorCode]> = [
  [/Failed to get (shared )?"[^"]+" lock|Failed to lock byte/, 'LOCKED'],
  // A name that does not fit in cluster 0 (see HEADER_FULL).
  [HEADER_FULL, 'INVALID_OPTION'],
  [/No such file or directory/, 'NOT_FOUND'],
  [/Image is corrupt; cannot be opened read\/write/, 'REFUSED'],
  [/Unsupported qcow2 (version|feature)|unknown compression type|[Ee]ncrypt|is not supported|not supported by/, 'UNSUPPORTED'],
  [/Permission denied|Input\/output error|Read-only file system|No space left on device|Cannot allocate memory|Disk quota/, 'IO'],
  [/not in qcow2 format|qcow2 header|header extension|[Hh]eader.*too (large|short)|L1 table|[Rr]eference count|refcount|offset invalid|Invalid backing file offset|too long|bitmaps?_ext|corrupt|Could not read/, 'INVALID_IMAGE'],
  [/Invalid parameter|Invalid option|[Pp]arameter '.*' expects|only supported for image creation|Unknown compatibility level|[Ii]nvalid .* value/, 'INVALID_OPTION'],
];

/** The error for a failed qemu-img run. */
export function qemuImgError(r: RunResult, ctx: ErrorContext): Qcow2Error {
  const details = ctx.file !== undefined ? { file: ctx.file } : {};
  if (r.timedOut || (r.signal !== null && r.status === null)) {
    const why = r.timedOut ? `did not finish within ${(ctx.limits?.timeoutMs ?? 0) / 1000} s and was killed` : `was killed by ${r.signal}`;
    const lim = ctx.limits ? ` (limits: address space ${ctx.limits.addressSpace} bytes, CPU ${ctx.limits.cpuSeconds} s, wall clock ${ctx.limits.timeoutMs / 1000} s)` : '';
    return new Qcow2Error('IO', `qemu-img ${ctx.command} ${why}${lim}${r.stderr.trim() ? `: ${coreMessage(r.stderr, ctx.arg)}` : ''}`, details);
  }
  const msg = coreMessage(r.stderr, ctx.arg) || `qemu-img ${ctx.command} failed with exit status ${r.status}`;
  let code: Qcow2ErrorCode | undefined;
  for (const [re, c] of RULES) {
    if (re.test(msg)) {
      code = c;
      break;
    }
  }
  if (code === 'LOCKED') {
    // Name the caller's file, in the words lockImage uses (provider/qcow2/io/lock.ts).
    const first = msg.split('\n')[0]!;
    const m = /Failed to get (shared )?"[^"]+" lock|Failed to lock byte \d+/.exec(first);
    const what = m ? m[0] : first;
    // qemu names the node it could not lock by its absolute path: the image (named as the
    // caller gave it, as lockImage does), or another file of the image (its data file).
    const held = /Is another process using the image \[([\s\S]*)\]\?$/.exec(msg)?.[1];
    const who = held !== undefined && ctx.file !== undefined && held === path.resolve(ctx.file) ? ctx.file : held ?? ctx.file;
    const hint = held !== undefined && who !== undefined ? `\nIs another process using the image [${who}]?` : '';
    return new Qcow2Error('LOCKED', what + hint, details);
  }
  if (code === 'INVALID_OPTION' && HEADER_FULL.test(msg)) {
    // The words of provider/qcow2/spec/header.ts (encodeHeader), so both engines say the same.
    return new Qcow2Error('INVALID_OPTION', 'Could not update qcow2 header: No space left on device', details);
  }
  if (code === undefined) {
    code = ['info', 'check', 'map', 'compare'].includes(ctx.command) ? 'INVALID_IMAGE' : 'IO';
  }
  return new Qcow2Error(code, msg, details);
}
