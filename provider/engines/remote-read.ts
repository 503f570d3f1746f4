// Header reads of a remote host's images on the calling thread (and the dependents scan of a
// folder there, one helper request). An image's facts (info with -U)
// and its chain's identities need only the first cluster of each file, which one request to the
// host helper brings (transport/ssh/remote-fs.ts); parsing it takes microseconds. Running that in
// a worker would cost two thread hand-offs and a bridge call per read, more than the read itself,
// and on a busy machine each hand-off waits for a core. So these two operations are answered
// here from the fetched bytes; anything that needs more of the file (a snapshot table past the
// first cluster, a lock) goes to a worker as every other operation does.

import { Qcow2Error } from '../model/errors';
import type { BlockFile } from '../qcow2/io/blockfile';
import type { HostFs, OpenedFile } from '../qcow2/io/hostfs';
import { readImageFacts } from '../qcow2/ops/info';
import type { RemoteFs } from '../transport/ssh/remote-fs';
import { ChainFiles, findDependentsAsync, readImageChainAsync } from './chain';
import type { OpCall, TargetDescriptor } from './native/protocol';

/** What remoteHeaderRead answers when the operation must run in a worker. */
export const IN_WORKER: unique symbol = Symbol('in a worker');

/** Thrown while parsing when a read goes past the bytes fetched: the operation goes to a worker. */
class BeyondHead extends Error {}

/** The first bytes of one file, as a read-only BlockFile; reading further throws BeyondHead. */
class HeadFile implements BlockFile {
  /** Set once a read went past the head (the parse may have caught the exception). */
  beyond = false;

  constructor(private readonly head: Buffer, private readonly length: number, private readonly allocated: number) {}

  read(offset: number, length: number): Buffer {
    const b = Buffer.alloc(length);
    this.readInto(b, offset);
    return b;
  }

  readInto(target: Uint8Array, offset: number): void {
    if (offset + target.length <= this.head.length) {
      target.set(this.head.subarray(offset, offset + target.length));
      return;
    }
    if (offset >= this.length) {
      target.fill(0); // past the end reads as zeros
      return;
    }
    this.beyond = true;
    throw new BeyondHead();
  }

  size(): number {
    return this.length;
  }

  allocatedSize(): number {
    return this.allocated;
  }

  write(): void {
    throw new BeyondHead();
  }

  truncate(): void {
    throw new BeyondHead();
  }

  flush(): void {}

  close(): void {}
}

/** A HostFs that can open one file, from its fetched head; everything else throws BeyondHead. */
function headHost(path: string, opened: OpenedFile): HostFs {
  const beyond = (): never => {
    throw new BeyondHead();
  };
  return {
    open: (p) => (p === path ? opened : beyond()),
    stat: beyond, lstat: beyond, link: beyond, rename: beyond, unlink: beyond, readdir: beyond, mkdir: beyond, mkdtemp: beyond,
    removeTree: beyond, fsyncDir: beyond, lock: beyond, probeLock: beyond, identity: beyond, extent: beyond, punchHole: beyond,
  };
}

/** engines/chain.ts's walk over a remote host's files, from this thread (one helper request per file). */
export function chainFilesOf(fs: RemoteFs): ChainFiles {
  return {
    async head(p) {
      let opened;
      try {
        opened = await fs.open(p, 'read');
      } catch (e) {
        // Not there, or not a regular file: no layer.
        if (Qcow2Error.isInstance(e) && (e.code === 'NOT_FOUND' || e.code === 'UNSUPPORTED')) return undefined;
        throw e;
      }
      const { answer, head } = opened;
      void fs.close(answer.handle);
      const id = answer.id ?? (await fs.stat(p))?.id;
      if (id === undefined) return undefined;
      // The open brings the first cluster, where QEMU requires the backing name to be.
      return { head: head ?? Buffer.alloc(0), size: answer.size, id };
    },
    id: async (p) => (await fs.stat(p))?.id,
    scan: (dir, limit) => fs.scan(dir, limit),
  };
}

/**
 * The result of `call` on a remote target when it is a header read this thread can answer
 * (info with forceShare, chain), else IN_WORKER.
 */
export async function remoteHeaderRead(target: TargetDescriptor, call: OpCall): Promise<unknown> {
  if (target.kind !== 'ssh') return IN_WORKER;
  if (call.op !== 'chain' && call.op !== 'dependents' && !(call.op === 'info' && call.options.forceShare)) return IN_WORKER;
  const { remoteFsById } = await import('../transport/ssh/remote-fs');
  const fs = remoteFsById(target.id);
  if (call.op === 'chain') return readImageChainAsync(call.path, call.seen, chainFilesOf(fs));
  // The folder scan is one helper request instead of a look at every file.
  if (call.op === 'dependents') return findDependentsAsync(call.path, call.candidates, chainFilesOf(fs));
  if (call.op !== 'info') return IN_WORKER;
  const { answer, head } = await fs.open(call.path, 'read');
  void fs.close(answer.handle);
  const file = new HeadFile(head ?? Buffer.alloc(0), answer.size, answer.allocated ?? answer.size);
  let facts;
  try {
    facts = readImageFacts(call.path, { lock: false, host: headHost(call.path, { file, size: answer.size }), ...(call.options.format ? { format: call.options.format } : {}) });
  } catch (e) {
    if (e instanceof BeyondHead || file.beyond) return IN_WORKER;
    throw e;
  }
  return file.beyond ? IN_WORKER : facts;
}
