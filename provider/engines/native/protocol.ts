// The native engine's operation protocol: what crosses from the caller to the thread that runs
// the format engine, and back. Plain structured-clone data (bigints included), so the same
// requests run inline, in a worker thread, or later on another transport.
//
// Every request names its target: the file system the operation's paths live on. `local` is
// this machine. `ssh` is a remote host: the worker builds its file access from the descriptor
// (transport/remote/hostfs.ts) and performs synchronous reads and writes through a bridge (a
// SharedArrayBuffer the worker blocks on with Atomics.wait while the main thread does the
// asynchronous SSH/SFTP work and notifies), so the format engine itself stays synchronous. The
// descriptor holds no secret: the main thread keeps the connection under its id.

import type { ErrorData } from '../../model/errors';
import type { AmendRequest, CommitRequest, SnapshotRequest } from '../../rules/types';
import type { CreateBehaviour } from '../../rules/create';
import type { CreateOptions, RawCreateOptions } from '../../model/options';
import type { BitmapAction, BitmapOptions, ImageRef, ReadOptions, RemoveOptions, RepairMode, ResizeOptions } from '../engine';
import type { LocalImportSource } from './ops';

/** Where an operation's files are. */
export type TargetDescriptor =
  | { kind: 'local' }
  /** A remote host: `id` names its connection in this process (transport/ssh/remote-fs.ts), `label` is "user@host:port". */
  | { kind: 'ssh'; id: string; label: string };

export const LOCAL: TargetDescriptor = { kind: 'local' };

/** The operations and their arguments (all paths on the target). */
export type OpCall =
  | { op: 'create'; path: string; options: CreateOptions; behaviour: CreateBehaviour }
  | { op: 'createRaw'; path: string; options: RawCreateOptions }
  | { op: 'resolveCreate'; path: string; options: CreateOptions; behaviour: CreateBehaviour }
  | {
    op: 'import'; path: string; options: CreateOptions; source: LocalImportSource; sourceTarget?: TargetDescriptor; durable: boolean; bitmaps?: { skipBroken: boolean };
    compressed?: boolean; overBacking?: boolean; raw?: boolean; more?: LocalImportSource[]; sparse?: number;
  }
  | { op: 'convertInto'; path: string; source: LocalImportSource; more?: LocalImportSource[]; sparse?: number; overBacking?: boolean }
  | { op: 'amend'; path: string; request: AmendRequest }
  | { op: 'resize'; path: string; size: bigint | { relative: bigint }; options: ResizeOptions }
  | { op: 'rebase'; path: string; backingFile: string; backingFormat?: string; safe: boolean }
  | { op: 'info'; path: string; options: ReadOptions }
  | { op: 'check'; path: string; options: ReadOptions }
  | { op: 'map'; path: string; options: ReadOptions }
  | { op: 'remove'; path: string; options: RemoveOptions }
  | { op: 'repair'; path: string; mode: RepairMode }
  | { op: 'repairDirty'; path: string }
  | { op: 'snapshot'; path: string; request: SnapshotRequest; options: ReadOptions }
  /** `path` is the first image's (for messages about the request). */
  | { op: 'compare'; path: string; a: ImageRef; b: ImageRef; strict: boolean; forceShare: boolean }
  | { op: 'commit'; path: string; request: CommitRequest }
  | { op: 'bitmap'; path: string; name: string; actions: BitmapAction[]; options: BitmapOptions }
  | { op: 'dumpBitmap'; path: string; name: string; options: ReadOptions }
  | { op: 'stat'; path: string }
  | { op: 'chain'; path: string; seen: string }
  | { op: 'dependents'; path: string; candidates: string[] };

export type OpName = OpCall['op'];

/** A request as sent to a worker: the call, its target, and whether progress is wanted. */
export interface OpRequest {
  id: number;
  target: TargetDescriptor;
  call: OpCall;
  progress: boolean;
}

/** What a worker posts back. */
export type OpReply =
  | { id: number; kind: 'progress'; done: number; total: number }
  | { id: number; kind: 'result'; value: unknown }
  | { id: number; kind: 'error'; error: ErrorData };
