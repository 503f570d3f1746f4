// Where the qemu-img engine's files and qemu-img itself are: this machine (LocalHost), or a
// remote host reached over SSH (ssh-host.ts). The engine asks the host for everything it does
// besides deciding: running qemu-img, looking at files, QEMU's lock probe, temporary folders,
// publishing new files, deleting an image. Each local method is the shared synchronous code the
// native engine runs too (qcow2/io, engines/local-facts, qcow2/ops/remove).

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Qcow2Error } from '../../model/errors';
import type { CreateOptions, ResolvedCreateOptions } from '../../model/options';
import type { CreateFacts } from '../../rules/create';
import { localFs, type HostStat } from '../../qcow2/io/hostfs';
import type { LockMode } from '../../qcow2/io/lock';
import { Publication, type PublishedKind } from '../../qcow2/io/publish';
import { assertNewImageFiles } from '../../qcow2/ops/create';
import type { RemoveOptions } from '../engine';
import type { ConsistencyFacts } from '../../rules/types';
import { DowngradeFacts, consistencyFacts, createFacts, downgradeFacts, sameFile } from '../local-facts';
import { findDependents, readImageChain } from '../chain';
import type { Dependents, ImageChain } from '../../model/chain';
import { removeImageFiles } from '../../qcow2/ops/remove';
import { Limits, QemuImgBinary, RunResult, probeQemuImg, runLimited } from './run';
import { HeaderPeek, peekHeader } from './spec';

/** New files made in temporary folders, published together (io/publish.ts) or not at all. */
export interface HostPublication {
  /** A private temporary folder beside `target` (removed when the publication ends). */
  folderBeside(target: string): Promise<string>;
  /** Publish `temp` (in such a folder) as `target`. */
  stage(temp: string, target: string, kind: PublishedKind): void;
  /** Make the staged files durable (unless `durable: false`) and link each into place, never replacing a file (EXISTS). */
  publish(opts?: { durable?: boolean }): Promise<void>;
  /** Undo: temporary files and folders go, and targets this publication linked. Never throws. */
  abort(): Promise<void>;
}

export interface QemuImgHost {
  /** "user@host:port" of a remote host; '' for this machine. */
  readonly label: string;
  /** The absolute name of a caller's path (remote paths are absolute already). */
  resolve(p: string): string;
  /** qemu-img on the host, version 7.2 or newer (probed once per name). */
  binary(name: string): Promise<QemuImgBinary>;
  /** Run `bin args` on the host under `limits`, in `cwd`; never throws for a non-zero exit. */
  run(bin: string, args: readonly string[], limits: Limits, cwd?: string): Promise<RunResult>;
  /** What is at `p` (following links); undefined when nothing is there. */
  stat(p: string): Promise<HostStat | undefined>;
  /** The header fields of a qcow2-looking regular file, or undefined. */
  peek(p: string): Promise<HeaderPeek | undefined>;
  /** Refuse (LOCKED) when QEMU holds `p` in a way that conflicts with `mode`; holds nothing after. */
  probeLock(p: string, mode: LockMode): Promise<void>;
  /** An empty (sparse) raw file of `length` bytes for the engine's own use, near `near`; dispose() removes it. */
  scratchFile(near: string, length: number): Promise<{ path: string; dispose(): Promise<void> }>;
  /**
   * A file of this machine made readable on the host: the file itself here; on a remote host a
   * copy beside `near` (data extents only: holes are not sent), removed by dispose().
   */
  localFile(localPath: string, near: string): Promise<{ path: string; dispose(): Promise<void> }>;
  /** What a create needs to know about the files around `imagePath` (the rules' CreateFacts). */
  createFacts(imagePath: string, options: CreateOptions): Promise<CreateFacts>;
  /** EXISTS / NOT_FOUND as every engine's create refuses (qcow2/ops/create.ts). */
  assertNewImageFiles(imagePath: string, o: Pick<ResolvedCreateOptions, 'dataFile' | 'adoptDataFile'>): Promise<void>;
  /** Two names for one file. */
  sameFile(a: string, b: string): Promise<boolean>;
  publication(): HostPublication;
  /** Delete an image under QEMU's write lock (qcow2/ops/remove.ts). */
  remove(file: string, options: RemoveOptions): Promise<void>;
  /** The identities of an image and its chain (engines/chain.ts on the host's files). */
  chain(file: string, seen: string): Promise<ImageChain>;
  /** Images naming `file` as backing (engines/chain.ts on the host's files). */
  dependents(file: string, candidates: readonly string[]): Promise<Dependents>;
  /** The native checker's verdict on an image's tables, where it reads the files here (else the engine asks qemu-img check). */
  consistency?(file: string): Promise<ConsistencyFacts>;
  /** What a downgrade's rules read from the image itself, where the host reads files here (else qemu-img decides, in its words). */
  downgradeFacts?(file: string): Promise<DowngradeFacts>;
}

/** The qemu-img engine's NOT_FOUND, in the native engine's words (blockfile.ts ioError). */
export function notFound(file: string): Qcow2Error {
  return new Qcow2Error('NOT_FOUND', `Could not open '${file}': No such file or directory`, { file });
}

/** This machine: qemu-img spawned with argument arrays, files through Node and io/libc. */
export const localHost: QemuImgHost = {
  label: '',
  resolve: (p) => path.resolve(p),
  binary: (name) => probeQemuImg(name),
  run: (bin, args, limits, cwd) => runLimited(bin, args, limits, cwd),
  stat: async (p) => localFs.stat(p),
  peek: async (p) => peekHeader(p),
  async probeLock(p, mode) {
    const f = localFs.open(p, mode === 'write' ? 'write' : 'read').file;
    try {
      localFs.lock(f, p, mode).release();
    } finally {
      f.close();
    }
  },
  async scratchFile(_near, length) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-qemuimg-'));
    const file = path.join(dir, 'backing-stand-in.raw');
    fs.writeFileSync(file, '');
    if (length > 0) fs.truncateSync(file, length);
    return { path: file, dispose: async () => fs.rmSync(dir, { recursive: true, force: true }) };
  },
  localFile: async (localPath) => ({ path: localPath, dispose: async () => undefined }),
  async createFacts(imagePath, options) {
    return createFacts(imagePath, options);
  },
  async assertNewImageFiles(imagePath, o) {
    assertNewImageFiles(imagePath, o);
  },
  sameFile: async (a, b) => sameFile(a, b),
  publication() {
    const pub = new Publication();
    return {
      folderBeside: async (target) => pub.folderBeside(target),
      stage: (temp, target, kind) => pub.stage(temp, target, kind),
      publish: async (opts) => pub.publish(opts),
      abort: async () => pub.abort(),
    };
  },
  remove: async (file, options) => removeImageFiles(file, options),
  consistency: async (file) => consistencyFacts(file),
  downgradeFacts: async (file) => downgradeFacts(file),
  chain: async (file, seen) => readImageChain(file, seen),
  dependents: async (file, candidates) => findDependents(file, candidates),
};
