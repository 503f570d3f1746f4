// The native engine's operation protocol: what crosses from the caller to the thread that runs
// the format engine, and back. Plain structured-clone data (bigints included), so the same
// requests run inline, in a worker thread, or later on another transport.
//
// Every request names its target: the file system the operation's paths live on. Only
// `{ kind: 'local' }` exists today. A remote host will be another kind: the worker builds its
// file access from the descriptor and performs synchronous reads and writes through a bridge
// (a SharedArrayBuffer the worker blocks on with Atomics.wait while the main thread does the
// asynchronous SSH/SFTP work and notifies), so the format engine itself stays synchronous.

import { Qcow2Error, type Qcow2ErrorCode } from '../../model/errors';
import type { AmendRequest } from '../../rules/types';
import type { CreateBehaviour } from '../../rules/create';
import type { CreateOptions } from '../../model/options';
import type { ImportSource, ReadOptions, RemoveOptions, ResizeOptions } from '../engine';

/** Where an operation's files are. */
export type TargetDescriptor = { kind: 'local' };

export const LOCAL: TargetDescriptor = { kind: 'local' };

/** The operations and their arguments (all paths on the target). */
export type OpCall =
  | { op: 'create'; path: string; options: CreateOptions; behaviour: CreateBehaviour }
  | { op: 'import'; path: string; options: CreateOptions; source: ImportSource }
  | { op: 'amend'; path: string; request: AmendRequest }
  | { op: 'resize'; path: string; size: bigint | { relative: bigint }; options: ResizeOptions }
  | { op: 'rebase'; path: string; backingFile: string; backingFormat?: string; safe: boolean }
  | { op: 'info'; path: string; options: ReadOptions }
  | { op: 'check'; path: string; options: ReadOptions }
  | { op: 'map'; path: string; options: ReadOptions }
  | { op: 'remove'; path: string; options: RemoveOptions };

export type OpName = OpCall['op'];

/** A request as sent to a worker: the call, its target, and whether progress is wanted. */
export interface OpRequest {
  id: number;
  target: TargetDescriptor;
  call: OpCall;
  progress: boolean;
}

/** A Qcow2Error as plain data: code, message, property, offset, file survive the crossing. */
export interface WireError {
  qcow2: boolean;
  code?: Qcow2ErrorCode;
  message: string;
  property?: string;
  offset?: number | bigint;
  file?: string;
}

/** What a worker posts back. */
export type OpReply =
  | { id: number; kind: 'progress'; done: number; total: number }
  | { id: number; kind: 'result'; value: unknown }
  | { id: number; kind: 'error'; error: WireError };

export function toWire(e: unknown): WireError {
  if (Qcow2Error.isInstance(e)) {
    const w: WireError = { qcow2: true, code: e.code, message: e.message };
    if (e.property !== undefined) w.property = e.property;
    if (e.offset !== undefined) w.offset = e.offset;
    if (e.file !== undefined) w.file = e.file;
    return w;
  }
  return { qcow2: false, message: e instanceof Error ? e.message : String(e) };
}

/** The error again on this side: a branded Qcow2Error when it was one. */
export function fromWire(w: WireError): Error {
  if (!w.qcow2 || w.code === undefined) return new Error(w.message);
  const details: { property?: string; offset?: number | bigint; file?: string } = {};
  if (w.property !== undefined) details.property = w.property;
  if (w.offset !== undefined) details.offset = w.offset;
  if (w.file !== undefined) details.file = w.file;
  return new Qcow2Error(w.code, w.message, details);
}
