// Fault injection shared by the suites that prove an operation crash-safe: a BlockFile that
// fails (and tears) its k-th mutation, and the classification of what a trial left behind
// against the image before and the image after the operation, with qemu-img.

import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import type { BlockFile } from '../../../provider/qcow2/io/blockfile';
import { checkOf, compareImages, infoOf, openSpec, type Info } from './amend-helpers';

export { checkOf };

const PAGE = 4096;

export class InjectedFault extends Error {
  constructor(readonly k: number) { super(`injected fault at mutation ${k}`); }
}

export type Variant = 'none' | 'first-page' | 'half-pages';
export const VARIANTS: Variant[] = ['none', 'first-page', 'half-pages'];

/** Bytes of a write of `len` at `off` that reach the file when it is torn, per variant. */
function tornLength(v: Variant, off: number, len: number): number {
  if (v === 'none') return 0;
  const firstBoundary = (Math.floor(off / PAGE) + 1) * PAGE;
  if (v === 'first-page') return firstBoundary < off + len ? firstBoundary - off : 0;
  // half-pages: the first half of the write, cut down to a page boundary.
  const cut = Math.floor((off + Math.floor(len / 2)) / PAGE) * PAGE;
  return cut > off ? cut - off : 0;
}

/** Counts mutations; throws at mutation `failAt` (1-based), tearing that write per `variant`. */
export class FaultyFile implements BlockFile {
  mutations = 0;
  constructor(private readonly f: BlockFile, private readonly failAt: number, private readonly variant: Variant) {}
  private next(): boolean {
    this.mutations++;
    return this.mutations === this.failAt;
  }
  read(offset: number, length: number): Buffer { return this.f.read(offset, length); }
  readInto(target: Uint8Array, offset: number): void { this.f.readInto(target, offset); }
  write(offset: number, data: Uint8Array): void {
    if (this.next()) {
      const n = tornLength(this.variant, offset, data.length);
      if (n > 0) this.f.write(offset, data.subarray(0, n));
      throw new InjectedFault(this.failAt);
    }
    this.f.write(offset, data);
  }
  truncate(size: number): void {
    if (this.next()) throw new InjectedFault(this.failAt);
    this.f.truncate(size);
  }
  size(): number { return this.f.size(); }
  flush(): void { this.f.flush(); }
  close(): void { this.f.close(); }
  allocatedSize(): number { return this.f.allocatedSize(); }
}

/** Replace `dst`'s contents with a copy of every file of `src`. */
export function copyDir(src: string, dst: string): void {
  rmSync(dst, { recursive: true, force: true });
  mkdirSync(dst, { recursive: true });
  for (const f of readdirSync(src)) copyFileSync(join(src, f), join(dst, f));
}

export interface Reference { dir: string; info: Info }
export type Outcome = 'old' | 'new' | 'corrupt';

/**
 * OFLAG_COPIED mismatches a crash may leave where the flag and the refcount live in different
 * clusters (QEMU's own write order leaves the same): qemu-img check counts them as corruptions,
 * `check -r all` repairs them. Only the harmless directions are accepted: the flag missing on a
 * cluster with refcount 1 (a needless copy on the next write), and, in an image that is still
 * the old one, the flag on a cluster whose extra reference nothing published yet (writing in
 * place is still right). Anything else in the output fails.
 */
function staleCopiedOnly(check: { status: number | null; stdout: string; stderr: string }): 'missing' | 'unpublished' | undefined {
  if (check.status !== 2) return undefined;
  let unpublished = false;
  for (const l of check.stderr.split('\n')) {
    if (l === '' || l.startsWith('Leaked cluster ')) continue;
    const m = /^ERROR OFLAG_COPIED (?:data|L2) cluster: (?:l2_entry|l1_index=\d+ l1_entry)=([0-9a-f]+) refcount=(\d+)$/.exec(l);
    if (!m) return undefined;
    const copied = BigInt(`0x${m[1]!}`) >> 63n === 1n;
    if (copied && m[2] !== '1') unpublished = true;
    else if (copied || m[2] !== '1') return undefined;
  }
  return unpublished ? 'unpublished' : 'missing';
}

/**
 * Classify the image in `dir` against the old and the new reference. With `staleCopied`, the
 * harmless OFLAG_COPIED mismatches above are accepted (counted in `Tally.staleCopied`).
 */
export function classify(dir: string, old: Reference, neu: Reference, opts: { staleCopied?: boolean } = {}): { outcome: Outcome; why: string; staleCopied?: boolean } {
  const check = checkOf(dir);
  const stale = opts.staleCopied ? staleCopiedOnly(check) : undefined;
  if (check.status !== 0 && check.status !== 3 && stale === undefined) {
    return { outcome: 'corrupt', why: `qemu-img check exit ${check.status}\n${check.stdout}${check.stderr}`.slice(0, 2000) };
  }
  let info: Info;
  try {
    info = infoOf(dir);
  } catch (e) {
    return { outcome: 'corrupt', why: (e as Error).message };
  }
  const norm = JSON.stringify(info.norm);
  // Both when the operation leaves the facts as they were (a snapshot applied): then the content decides.
  const refs = [old, neu].filter((r) => norm === JSON.stringify(r.info.norm));
  if (!refs.length) return { outcome: 'corrupt', why: `info equals neither old nor new:\n${norm}\nold ${JSON.stringify(old.info.norm)}\nnew ${JSON.stringify(neu.info.norm)}` };
  let ref: Reference | undefined;
  const mismatches: string[] = [];
  for (const r of refs) {
    const cmp = compareImages(openSpec(dir, info.dataFile), openSpec(r.dir, r.info.dataFile));
    if (cmp.status === 0 && cmp.stdout.includes('Images are identical.')) {
      ref = r;
      break;
    }
    mismatches.push(`compare with the ${r === old ? 'old' : 'new'} reference: exit ${cmp.status} ${cmp.stdout}${cmp.stderr}`);
  }
  if (!ref) return { outcome: 'corrupt', why: mismatches.join('\n') };
  if (stale === 'unpublished' && ref !== old) {
    return { outcome: 'corrupt', why: `OFLAG_COPIED on shared clusters of the new image:\n${check.stderr}`.slice(0, 2000) };
  }
  return { outcome: ref === old ? 'old' : 'new', why: '', ...(stale ? { staleCopied: true } : {}) };
}

export interface Tally { trials: number; old: number; new: number; corrupt: number; staleCopied: number; failures: string[] }
export const tally = (): Tally => ({ trials: 0, old: 0, new: 0, corrupt: 0, staleCopied: 0, failures: [] });
export function record(t: Tally, r: { outcome: Outcome; why: string; staleCopied?: boolean }, label: string): void {
  t.trials++;
  t[r.outcome]++;
  if (r.staleCopied) t.staleCopied++;
  if (r.outcome === 'corrupt' && t.failures.length < 5) t.failures.push(`${label}: ${r.why}`);
}
export const line = (name: string, t: Tally) =>
  `${name}: ${t.trials} trials, ${t.old} old, ${t.new} new (${t.staleCopied} with stale OFLAG_COPIED flags), ${t.corrupt} corruptions`;


