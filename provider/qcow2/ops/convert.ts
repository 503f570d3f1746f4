// Import (qemu-img convert -O qcow2): stream a guest view (raw file, or qcow2 through its chain)
// into a new image. Sparse-aware: ranges the source knows to be zeros (holes, zero clusters)
// are not read, and read clusters that are all zeros are not allocated; with an external data
// file the data goes to the data file at guest offsets. The image is built under temporary
// names and published (io/publish.ts) last, so an existing image or data file is never touched
// and a failure leaves nothing behind.
//
// The copy goes window by window (1 MiB of guest view): each window is planned from metadata
// alone (guest/extents.ts), then its I/O done. copyGuestAsync keeps several windows in flight:
// host-contiguous runs are one pread each into a reused window buffer, neighbouring compressed
// clusters one pread between them, clusters decoded by the calling thread and the decoder
// threads together (io/codecs.ts), and writes issued as soon as a window is placed, while the
// next windows are read. Placement (which host clusters) is done in guest order on the calling
// thread, so the layout does not depend on timing. Memory is bounded by the windows: 4 buffers
// of 1 MiB, 2 for stored compressed clusters, plus the metadata.
//
// A window whose data all lies in local files, each cluster all data or all zeros (a raw file's
// extents, a chain's uncompressed clusters), is copied file to file instead (placeDirect): its
// bytes go from the source's host offsets to the new clusters' by copy_file_range
// (io/copy-range.ts), never through a buffer here. Which clusters are all zeros (and so not
// allocated, as qemu-img leaves them) is still decided from their bytes: a read of each
// cluster's first 4 KiB, where data nearly always shows, and of the whole cluster only when
// those are zeros.

import { BlockFile, WriteCombiner, readIntoAsync, writeAsync } from '../io/blockfile';
import { clusterDecoder, decodeCluster, DecodeJob, sharedBuffer } from '../io/codecs';
import { HostFs, localFs } from '../io/hostfs';
import { Publication, existsError } from '../io/publish';
import { isZeroBuffer, writeZeros } from '../io/sparse';
import { CreatePlan, writePlan } from './create';
import { Extent, guestExtents } from '../guest/extents';
import { Qcow2Image } from '../guest/qcow2';
import { GuestSource, ProgressFn, chainZero } from '../guest/source';
import { DirtyBitmap } from '../meta/dirty-bitmap';
import { clusterCompressor } from '../io/compressor';
import { copyGuestCompressed } from './convert-compressed';
import { RangeCopier } from '../io/copy-range';
import { ConvertRequest, DEFAULT_SPARSE, convertRequests, copyBuffer, sparseRuns } from './convert-sparse';

const WINDOW = 1 << 20;
/**
 * Windows being read and decoded at once. Two keep every thread busy (a window's clusters are
 * shared out between the threads); more only cost memory (4: 8 MiB more RSS, no faster).
 */
const DEPTH = 2;
/** Window buffers at most: those in flight, and those whose writes have not finished. */
const BUFFERS = DEPTH + 2;
/** Compressed clusters this close together in the file are read with one pread. */
const GAP = 64 << 10;

/**
 * Placed file-to-file copies waiting for the kernel, at most: the calling thread places no
 * further ahead. One copy runs at a time: the kernel serialises writers of one file (ext4's
 * inode lock), and a second copy spins on that lock (rwsem_spin_on_owner: 0.08 s of CPU on a
 * 1 GiB import, 10% of the process's, for no gain in time). The next starts as the last one
 * ends (copyGuestAsync).
 */
const QUEUED_COPIES = 4;
/**
 * Bytes one file-to-file copy may grow to: a copy that continues the one before it in both files
 * (consecutive windows of one extent, placed one after another) joins it, up to this size.
 * Fewer, larger copy_file_range calls: each call is a hand-over to another thread and back.
 */
const COPY_MAX = 8 << 20;
/** Bytes of a cluster read first to tell data from zeros (a page). */
const PROBE = 4096;

/** qemu-img convert's request size (its I/O buffer, 2 MiB): how its progress advances. */
const PROGRESS_STEP = 2 << 20;
/** The stretches in which progress looks for known zeros (a data range is split at their edges). */
const PROGRESS_CHUNK = 4 << 20;

/** Sub-ranges of [offset, offset+length) the source knows to read as zeros without reading them. */
export function knownZeroRanges(src: GuestSource, offset: number, length: number): Array<{ start: number; length: number; zero: boolean }> {
  const out: Array<{ start: number; length: number; zero: boolean }> = [];
  let p = offset;
  const end = offset + length;
  while (p < end) {
    const { zero, length: n } = chainZero(src, p, end - p);
    const last = out[out.length - 1];
    if (last && last.zero === zero && last.start + last.length === p) last.length += n;
    else out.push({ start: p, length: n, zero });
    p += n;
  }
  return out;
}

/**
 * Progress as qemu-img convert counts it: bytes of data (the ranges that are not known zeros,
 * in steps of at most 2 MiB) out of all of them, so a caller can print qemu-img's percentages.
 * The steps are planned from metadata before the copy; upTo(offset) reports those of the ranges
 * that end by `offset`, however the copy is windowed.
 */
class CopyProgress {
  private readonly ends: number[] = [];
  private readonly dones: number[] = [];
  private next = 0;
  private readonly total: number;

  constructor(src: GuestSource, size: number, cs: number, private readonly fn: ProgressFn) {
    const chunk = Math.max(cs, Math.floor(PROGRESS_CHUNK / cs) * cs);
    let done = 0;
    for (let off = 0; off < size; off += chunk) {
      for (const r of knownZeroRanges(src, off, Math.min(chunk, size - off))) {
        if (r.zero) continue;
        const end = r.start + r.length;
        for (let p = r.start; p < end; p += PROGRESS_STEP) {
          done += Math.min(PROGRESS_STEP, end - p);
          this.ends.push(end);
          this.dones.push(done);
        }
      }
    }
    this.total = done;
  }

  upTo(offset: number): void {
    while (this.next < this.ends.length && this.ends[this.next]! <= offset) this.fn(this.dones[this.next++]!, this.total);
  }

  finish(): void {
    this.upTo(Infinity);
    this.fn(this.total, this.total);
  }
}

interface Window { offset: number; length: number; extents: Extent[]; buf?: Buffer; direct?: boolean }

/** One write of placed clusters. */
interface Write { file: BlockFile; host: number; data: Buffer }

/** One file-to-file copy of placed clusters: `length` bytes of `src` at `from` to `host` in the image's file. */
interface Copy { src: BlockFile; from: number; host: number; length: number }

/**
 * Whether a window can be copied file to file: whole clusters, every extent zeros or data in a
 * local file, the zeros at cluster boundaries (so each cluster is all data or all zeros), and
 * the kernel's copy possible between each source file and the image's.
 */
function directWindow(w: Window, cs: number, target: BlockFile, copier: RangeCopier): boolean {
  if (w.offset % cs !== 0 || w.length % cs !== 0) return false;
  let data = false;
  for (const e of w.extents) {
    if (e.kind === 'zero') {
      if (e.offset % cs !== 0 || e.length % cs !== 0) return false;
    } else if (e.kind !== 'data' || !copier.direct(e.file, target)) {
      return false;
    } else {
      data = true;
    }
  }
  return data;
}

/** True when the `cs` bytes of guest cluster `c` (all data, in `extents`) are all zeros; `probe` and `whole` are scratch. */
function zeroCluster(extents: Extent[], c: number, cs: number, probe: Buffer, whole: Buffer): boolean {
  const first = probe.subarray(0, Math.min(cs, PROBE));
  readGuest(extents, c * cs, first);
  if (!isZeroBuffer(first)) return false;
  if (first.length === cs) return true;
  readGuest(extents, c * cs, whole);
  return isZeroBuffer(whole);
}

/** True when buf[start, end) is all zeros: its first page looked at first, where data nearly always shows. */
function zeroBytes(buf: Buffer, start: number, end: number): boolean {
  const probe = Math.min(end, start + PROBE);
  return isZeroBuffer(buf, start, probe) && (probe === end || isZeroBuffer(buf, probe, end));
}

/** Fill `into` with the guest bytes at `offset` from data extents (synchronous preads). */
function readGuest(extents: Extent[], offset: number, into: Buffer): void {
  const end = offset + into.length;
  for (const e of extents) {
    if (e.kind !== 'data' || e.offset + e.length <= offset || e.offset >= end) continue;
    const a = Math.max(offset, e.offset), b = Math.min(end, e.offset + e.length);
    e.file.readInto(into.subarray(a - offset, b - offset), e.host + a - e.offset);
  }
}

/**
 * Place a direct window's clusters that are not all zeros (runs, each one contiguous host
 * allocation, in guest order) and return the copies that put their bytes there, one per piece
 * of a source extent. A run the image cannot place in one allocation is written through a
 * buffer here (dst.write).
 */
function placeDirect(w: Window, dst: Qcow2Image, probe: Buffer, whole: Buffer): Copy[] {
  const cs = dst.cs;
  const first = w.offset / cs;
  const count = w.length / cs;
  const data = new Uint8Array(count);
  for (const e of w.extents) {
    if (e.kind !== 'data') continue;
    for (let c = Math.floor(e.offset / cs); c * cs < e.offset + e.length; c++) data[c - first] = 1;
  }
  for (let i = 0; i < count; i++) if (data[i] === 1 && zeroCluster(w.extents, first + i, cs, probe, whole)) data[i] = 0;
  const copies: Copy[] = [];
  let run = -1;
  for (let i = 0; i <= count; i++) {
    if (i < count && data[i] === 1) {
      if (run < 0) run = i;
      continue;
    }
    if (run < 0) continue;
    const start = (first + run) * cs, end = (first + i) * cs;
    const host = dst.placeNewClusters(first + run, i - run);
    if (host === undefined) {
      const buf = Buffer.allocUnsafe(end - start);
      readGuest(w.extents, start, buf);
      dst.write(start, buf);
    } else {
      for (const e of w.extents) {
        if (e.kind !== 'data' || e.offset + e.length <= start || e.offset >= end) continue;
        const a = Math.max(start, e.offset), b = Math.min(end, e.offset + e.length);
        copies.push({ src: e.file, from: e.host + a - e.offset, host: host + a - start, length: b - a });
      }
    }
    run = -1;
  }
  return copies;
}

function planWindow(src: GuestSource, offset: number, size: number): Window {
  const length = Math.min(WINDOW, size - offset);
  return { offset, length, extents: guestExtents(src, offset, length) };
}

function needsBuffer(w: Window): boolean {
  return w.extents.some((e) => e.kind !== 'zero');
}

/** Compressed extents in runs that one pread covers: stored close together, in one file. */
function compressedGroups(extents: Extent[]): Array<Array<Extract<Extent, { kind: 'compressed' }>>> {
  const groups: Array<Array<Extract<Extent, { kind: 'compressed' }>>> = [];
  let cur: Array<Extract<Extent, { kind: 'compressed' }>> = [];
  let lo = 0, hi = 0;
  for (const e of extents) {
    if (e.kind !== 'compressed') continue;
    if (cur.length > 0 && e.file === cur[0]!.file && e.host >= lo && e.host <= hi + GAP && Math.max(hi, e.host + e.size) - lo <= WINDOW * 2) {
      cur.push(e);
      hi = Math.max(hi, e.host + e.size);
      continue;
    }
    if (cur.length > 0) groups.push(cur);
    cur = [e];
    lo = e.host;
    hi = e.host + e.size;
  }
  if (cur.length > 0) groups.push(cur);
  return groups;
}

/** Where a compressed cluster's decoded bytes go: straight into the window when it is whole there. */
function decodeTarget(w: Window, e: Extract<Extent, { kind: 'compressed' }>): { out: Buffer; whole: boolean } {
  const whole = e.within === 0 && e.length === e.clusterSize;
  return whole ? { out: w.buf!.subarray(e.offset - w.offset, e.offset - w.offset + e.clusterSize), whole } : { out: Buffer.allocUnsafe(e.clusterSize), whole };
}

function place(w: Window, e: Extract<Extent, { kind: 'compressed' }>, t: { out: Buffer; whole: boolean }): void {
  if (!t.whole) w.buf!.set(t.out.subarray(e.within, e.within + e.length), e.offset - w.offset);
}

/** Fill the window's buffer (synchronously): reads, decoded clusters; zero extents are left to placeWindow. */
function fillSync(w: Window): void {
  for (const e of w.extents) {
    const at = w.buf!.subarray(e.offset - w.offset, e.offset - w.offset + e.length);
    if (e.kind === 'data') e.file.readInto(at, e.host);
    else if (e.kind === 'read') e.source.readInto(at, e.offset);
  }
  for (const g of compressedGroups(w.extents)) {
    const lo = g[0]!.host;
    const stored = Buffer.allocUnsafe(Math.max(...g.map((e) => e.host + e.size)) - lo);
    g[0]!.file.readInto(stored, lo);
    for (const e of g) {
      const t = decodeTarget(w, e);
      decodeCluster(stored.subarray(e.host - lo, e.host - lo + e.size), t.out, e.compressionType, BigInt(e.host));
      place(w, e, t);
    }
  }
}

/**
 * The same, off this thread: every pread in flight at once (libuv's thread pool), then the
 * window's compressed clusters decoded by the decoder threads, from `scratch` into the window's
 * buffer (both in shared memory).
 */
async function fillAsync(w: Window, scratch: Buffer): Promise<void> {
  const reads: Array<Promise<void> | void> = [];
  for (const e of w.extents) {
    const at = w.buf!.subarray(e.offset - w.offset, e.offset - w.offset + e.length);
    if (e.kind === 'data') reads.push(readIntoAsync(e.file, at, e.host));
    else if (e.kind === 'read') e.source.readInto(at, e.offset);
  }
  const groups = compressedGroups(w.extents);
  // Stored compressed bytes are read on this thread: a window's worth is small, and the decode
  // that follows can start without waiting for another thread to be scheduled.
  if (groups.length === 0) {
    await Promise.all(reads);
    return;
  }
  const spans = groups.map((g) => ({ g, lo: g[0]!.host, len: Math.max(...g.map((e) => e.host + e.size)) - g[0]!.host }));
  const need = spans.reduce((n, x) => n + x.len, 0);
  const stored = need <= scratch.length ? scratch : sharedBuffer(need);
  const jobs: DecodeJob[] = [];
  let used = 0;
  for (const { g, lo, len } of spans) {
    g[0]!.file.readInto(stored.subarray(used, used + len), lo);
    for (const e of g) {
      jobs.push({
        from: used + e.host - lo, size: e.size, to: e.offset - w.offset, within: e.within, length: e.length,
        clusterSize: e.clusterSize, compressionType: e.compressionType, at: e.host,
      });
    }
    used += len;
  }
  await Promise.all(reads);
  await clusterDecoder().decode(stored, w.buf!, jobs);
}

/**
 * Place a filled window's clusters that are not all zeros (runs of them, each one contiguous
 * host allocation, in guest order) and return the writes that put their bytes there.
 */
function placeWindow(w: Window, dst: Qcow2Image): Write[] {
  const cs = dst.cs;
  const first = Math.floor(w.offset / cs);
  const count = Math.ceil((w.offset + w.length) / cs) - first;
  const candidate = new Uint8Array(count);
  for (const e of w.extents) {
    if (e.kind === 'zero') continue;
    for (let c = Math.floor(e.offset / cs); c * cs < e.offset + e.length; c++) candidate[c - first] = 1;
  }
  // Zeros read nowhere: fill them in where they share a cluster with data.
  const buf = w.buf;
  if (buf === undefined) return [];
  for (const e of w.extents) {
    if (e.kind !== 'zero') continue;
    const end = e.offset + e.length;
    for (const c of new Set([Math.floor(e.offset / cs), Math.floor((end - 1) / cs)])) {
      if (!candidate[c - first]) continue;
      const a = Math.max(e.offset, c * cs), b = Math.min(end, (c + 1) * cs);
      buf.fill(0, a - w.offset, b - w.offset);
    }
  }
  // The image's last cluster: written whole, zeros past the end (QEMU's copy-on-write of the rest
  // of a partly written cluster zeroes it up to the cluster's end).
  const tail = Math.min(buf.length, Math.ceil((w.offset + w.length) / cs) * cs - w.offset);
  buf.fill(0, w.length, tail);
  const writes: Write[] = [];
  const target = dst.dataFile ?? dst.file;
  let run = -1;
  for (let i = 0; i <= count; i++) {
    const s = i * cs + first * cs - w.offset;
    const data = i < count && candidate[i] === 1 && !zeroBytes(buf, s, Math.min(w.length, s + cs));
    if (data && run < 0) run = i;
    if (!data && run >= 0) {
      const host = dst.placeNewClusters(first + run, i - run);
      const from = (first + run) * cs - w.offset;
      const data = buf.subarray(from, Math.min(tail, (first + i) * cs - w.offset));
      if (host !== undefined) writes.push({ file: target, host, data });
      else dst.write(w.offset + from, data.subarray(0, Math.min(data.length, dst.size - w.offset - from)));
      run = -1;
    }
  }
  return writes;
}

/**
 * Copy a guest view into an open, empty image, on the calling thread (the synchronous API):
 * only non-zero clusters are written. `progress` counts as qemu-img convert does (CopyProgress).
 */
export function copyGuest(src: GuestSource, dst: Qcow2Image, progress?: ProgressFn): void {
  const size = Math.min(src.size, dst.size);
  const report = progress && new CopyProgress(src, size, dst.cs, progress);
  let buf: Buffer | undefined;
  for (let off = 0; off < size; off += WINDOW) {
    const w = planWindow(src, off, size);
    if (needsBuffer(w)) {
      w.buf = buf ??= Buffer.allocUnsafe(WINDOW);
      fillSync(w);
      for (const x of placeWindow(w, dst)) x.file.write(x.host, x.data);
    }
    dst.maybeCommit();
    report?.upTo(off + w.length);
  }
  report?.finish();
}

/**
 * Copy a guest view into an open, empty image with reads, decoding and writes overlapped (see
 * the top of this file). Resolves once every write has finished; on a failure, waits for what
 * is in flight to settle, then rejects, so nothing writes after it returns.
 */
export async function copyGuestAsync(src: GuestSource, dst: Qcow2Image, progress?: ProgressFn): Promise<void> {
  const size = Math.min(src.size, dst.size);
  const report = progress && new CopyProgress(src, size, dst.cs, progress);
  const free: Buffer[] = [];
  const scratch: Buffer[] = [];
  let allocated = 0;
  const writing: Array<Promise<void>> = [];
  const inflight: Array<{ w: Window; ready: Promise<void> }> = [];
  const target = dst.dataFile ?? dst.file;
  const copier = new RangeCopier();
  const probe = Buffer.allocUnsafe(PROBE);
  let whole: Buffer | undefined;
  const acquire = async (): Promise<Buffer> => {
    while (free.length === 0 && allocated >= BUFFERS && writing.length > 0) await writing.shift();
    if (free.length > 0) return free.pop()!;
    allocated++;
    return sharedBuffer(WINDOW);
  };
  // File-to-file copies, one at a time, in the order placed. The last one queued may still grow
  // (the next piece placed may continue it in both files) until the kernel is free to take it:
  // each copy starts the moment the one before it ends, so the kernel never waits for the next
  // window to be placed, and the copies are as large as the placing keeps ahead of them.
  const queued: Copy[] = [];
  let copying: Promise<void> | undefined;
  let copyFailed: { error: unknown } | undefined;
  let copyEnded: (() => void) | undefined;
  const nextCopy = (): void => {
    if (copying !== undefined || copyFailed !== undefined || queued.length === 0) return;
    const c = queued.shift()!;
    copying = copier.copy(c.src, c.from, target, c.host, c.length).then(() => {
      copying = undefined;
      nextCopy();
    }, (error: unknown) => {
      copyFailed = { error };
      copying = undefined;
    }).finally(() => copyEnded?.());
  };
  /** Wait for a copy to end while `busy()`; a failed copy's error is thrown here. */
  const copiesWhile = async (busy: () => boolean): Promise<void> => {
    while (copyFailed === undefined && busy()) await new Promise<void>((resolve) => { copyEnded = resolve; });
    if (copyFailed !== undefined) throw copyFailed.error;
  };
  const queueCopy = (c: Copy): void => {
    const last = queued[queued.length - 1];
    if (last !== undefined && c.src === last.src && c.from === last.from + last.length && c.host === last.host + last.length && last.length + c.length <= COPY_MAX) {
      last.length += c.length;
    } else {
      queued.push(c);
    }
    nextCopy();
  };
  let next = 0;
  try {
    while (inflight.length > 0 || next < size) {
      while (inflight.length < DEPTH && next < size) {
        const w = planWindow(src, next, size);
        next += w.length;
        w.direct = directWindow(w, dst.cs, target, copier);
        if (!needsBuffer(w) || w.direct) {
          inflight.push({ w, ready: Promise.resolve() });
          continue;
        }
        w.buf = await acquire();
        // Stored compressed bytes: a window's worth at most (sector padding aside), per window in flight.
        const stored = w.extents.some((e) => e.kind === 'compressed') ? scratch.pop() ?? sharedBuffer(WINDOW + (WINDOW >> 3)) : undefined;
        const ready = (stored !== undefined ? fillAsync(w, stored).finally(() => scratch.push(stored)) : fillAsync(w, Buffer.alloc(0)));
        ready.catch(() => undefined); // observed below, in order
        inflight.push({ w, ready });
      }
      const { w, ready } = inflight.shift()!;
      await ready;
      if (w.direct) {
        for (const c of placeDirect(w, dst, probe, whole ??= Buffer.allocUnsafe(dst.cs))) queueCopy(c);
        await copiesWhile(() => queued.length > QUEUED_COPIES);
        // Let a copy that ended start the next one now, not after the windows placed before the
        // queue fills (only the event loop hears of it): the kernel's idle time between the
        // copies of a flattened chain, 78 to 89 ms of its 0.4 s, became 29 to 64 ms.
        if (copying !== undefined) await new Promise((resolve) => setImmediate(resolve));
        dst.maybeCommit();
        report?.upTo(w.offset + w.length);
        continue;
      }
      const writes = placeWindow(w, dst);
      const buf = w.buf;
      if (buf !== undefined) {
        const done = Promise.all(writes.map((x) => writeAsync(x.file, x.host, x.data))).then(() => { free.push(buf); });
        done.catch(() => undefined);
        writing.push(done);
      }
      dst.maybeCommit();
      report?.upTo(w.offset + w.length);
    }
    await copiesWhile(() => copying !== undefined || queued.length > 0);
    await Promise.all(writing);
  } catch (e) {
    queued.length = 0;
    await Promise.allSettled([...inflight.map((f) => f.ready), ...writing, copying]);
    throw e;
  }
  report?.finish();
}

/** A file whose flush does nothing: a new image under a temporary name needs no barriers, publish flushes it once. */
class Unflushed implements BlockFile {
  readonly readIntoAsync?: BlockFile['readIntoAsync'];
  readonly writeAsync?: BlockFile['writeAsync'];
  readonly fd?: number;
  constructor(private readonly f: BlockFile) {
    if (f.readIntoAsync) this.readIntoAsync = f.readIntoAsync.bind(f);
    if (f.writeAsync) this.writeAsync = f.writeAsync.bind(f);
    this.fd = f.fd;
  }
  read(offset: number, length: number): Buffer { return this.f.read(offset, length); }
  readInto(target: Uint8Array, offset: number): void { this.f.readInto(target, offset); }
  write(offset: number, data: Uint8Array): void { this.f.write(offset, data); }
  size(): number { return this.f.size(); }
  truncate(size: number): void { this.f.truncate(size); }
  flush(): void {}
  close(): void {}
  allocatedSize(): number { return this.f.allocatedSize(); }
}

/**
 * convert --bitmaps: the bitmaps (in their directory order) added to the new image after its
 * data, as qemu-img adds them (so the copy does not mark them), stored when it closes: same
 * names, granularities, recording flags and bits, the same directory order.
 */
export function copyBitmaps(dst: Qcow2Image, bitmaps: readonly DirtyBitmap[]): void {
  dst.commit();
  const target = dst.bitmaps();
  // QEMU's lists are newest first: adding the source's in reverse keeps its directory order.
  for (const b of [...bitmaps].reverse()) {
    const copy = new DirtyBitmap(b.name, b.granularityBits, BigInt(dst.size), dst.cs, b.enabled);
    copy.merge(b);
    target.add(copy);
  }
}

/** How an import writes: `host` (default the local filesystem), `durable` (flush before publishing, default true; see Publication.publish), `bitmaps` (convert --bitmaps, added after the data). */
export interface WriteImportOptions {
  progress?: ProgressFn;
  host?: HostFs;
  durable?: boolean;
  bitmaps?: readonly DirtyBitmap[];
  /** convert -c: compressed clusters of the plan's compression type (ops/convert-compressed.ts). */
  compressed?: boolean;
  /** convert -B: the new image is an overlay; only what the source's top layer holds is copied (copyTopLayer). */
  topLayerOnly?: boolean;
  /** convert -S: the shortest run of zeros left out, in bytes (a multiple of 512; 0: every cluster written). Default 4096. */
  sparse?: number;
  /** With topLayerOnly: the size of the new image's backing file (zeros past it are left to it). */
  backingSize?: number;
}

/**
 * Create the files of an import (data file first: the image names it), run `copy` into the new
 * image, add the bitmaps, then publish them; on any failure remove everything made. Never overwrites.
 */
function importInto<T>(imagePath: string, plan: CreatePlan, opts: WriteImportOptions, copy: (img: Qcow2Image) => T, done: (r: T, finish: () => void, fail: (e: unknown) => never) => T): T {
  const host = opts.host ?? localFs;
  const o = plan.options;
  if (host.lstat(imagePath) !== undefined) throw existsError(imagePath, 'image');
  if (o.dataFile !== undefined && host.lstat(o.dataFile) !== undefined) throw existsError(o.dataFile, 'data file');
  const pub = new Publication(host);
  const fail = (e: unknown): never => {
    pub.abort();
    throw e;
  };
  let img: Qcow2Image | undefined;
  try {
    let df: BlockFile | null = null;
    if (o.dataFile !== undefined) {
      df = new Unflushed(pub.create(o.dataFile, 'data file'));
      const dsize = plan.dataFileSize ?? 0;
      if (plan.dataFilePrealloc) writeZeros(df, 0, dsize, true);
      df.truncate(dsize);
    }
    // Compressed clusters are small writes, one after another: gathered into 1 MiB writes.
    const f = opts.compressed ? new WriteCombiner(new Unflushed(pub.create(imagePath, 'image'))) : new Unflushed(pub.create(imagePath, 'image'));
    writePlan(plan, f);
    img = Qcow2Image.over(f, { writable: true, dataFile: df, fileName: imagePath, host });
    const opened = img;
    return done(copy(opened), () => {
      if (opts.bitmaps) copyBitmaps(opened, opts.bitmaps);
      opened.close();
      f.flush(); // (a WriteCombiner's last writes; the publication makes them durable)
      pub.publish({ durable: opts.durable ?? true });
    }, fail);
  } catch (e) {
    return fail(e);
  }
}

/**
 * Write a planned image at `imagePath` holding the guest view of `src`, on the calling thread.
 * Never overwrites: the image and data file must not exist. On failure nothing new is left
 * behind.
 */
export function writeImportedImage(imagePath: string, plan: CreatePlan, src: GuestSource, opts: WriteImportOptions = {}): void {
  importInto(imagePath, plan, opts, (img) => (special(opts, img) ? copySpecial(src, img, plan, opts) : copyGuest(src, img, opts.progress)),
    (_r, finish) => finish());
}

/** writeImportedImage with the copy overlapped (copyGuestAsync); -c, -B and -S copies run on this thread (compression on its pool). */
export function writeImportedImageAsync(imagePath: string, plan: CreatePlan, src: GuestSource, opts: WriteImportOptions = {}): Promise<void> {
  return importInto(imagePath, plan, opts,
    (img) => (special(opts, img) ? Promise.resolve().then(() => copySpecial(src, img, plan, opts)) : copyGuestAsync(src, img, opts.progress)),
    (p, finish, fail) => p.then(finish, fail));
}

/**
 * Whether the copy is not the plain one (copyGuest): -c, -B, or a -S under which a cluster
 * with no data can be written. With -S at most the cluster size (the default 4 KiB is), the
 * clusters qemu-img allocates are exactly those holding a byte that is not zero, which the plain
 * copy finds a cluster at a time; -S 0 writes every cluster, and a larger -S writes zero
 * clusters that lie between data closer than -S.
 */
const special = (opts: WriteImportOptions, dst: Qcow2Image) =>
  opts.compressed === true || opts.topLayerOnly === true || (opts.sparse !== undefined && (opts.sparse === 0 || opts.sparse > dst.cs));

/** The -B copy, convert -c's (its compressor started for the plan's compression type and closed after), or a -S copy. */
function copySpecial(src: GuestSource, dst: Qcow2Image, plan: CreatePlan, opts: WriteImportOptions): void {
  if (opts.topLayerOnly && !opts.compressed) {
    copyTopLayer(src, dst, opts.progress, opts.sparse, opts.backingSize);
    return;
  }
  if (!opts.compressed) {
    copyGuestSparse(src, dst, opts.sparse ?? DEFAULT_SPARSE, opts.progress);
    return;
  }
  const compressor = clusterCompressor(plan.options.compressionType, dst.cs);
  try {
    copyGuestCompressed(src, dst, compressor, opts.progress, opts.sparse,
      opts.topLayerOnly ? { ...(opts.backingSize !== undefined ? { backingSize: opts.backingSize } : {}) } : undefined);
  } finally {
    compressor.close();
  }
}

/**
 * qemu-img convert's progress over its requests: the bytes of those it writes (data, and with
 * -S 0 zeros too) out of all of them, reported as each is done.
 */
function requestProgress(requests: readonly ConvertRequest[], full: boolean, fn?: ProgressFn): (r: ConvertRequest) => void {
  if (fn === undefined) return () => undefined;
  const counted = (r: ConvertRequest) => r.kind === 'data' || (full && r.kind === 'zero');
  const total = requests.reduce((t, r) => t + (counted(r) ? r.n : 0), 0);
  let done = 0;
  fn(0, total);
  return (r) => {
    if (!counted(r)) return;
    done += r.n;
    fn(done, total);
  };
}

/**
 * One request of qemu-img convert into `dst` as it writes it (convert_co_write): nothing for
 * what is left to the backing file; with -S 0 everything else as data (zero requests included);
 * otherwise the data runs of sparseRuns as data, and its zero runs and the zero requests through
 * `zeros` (nothing on a new image; written as zeros on an image that may hold data there).
 */
function writeRequest(dst: { write(offset: number, data: Uint8Array): void }, src: GuestSource, r: ConvertRequest, buf: Buffer, sparse: number,
  zeros: (offset: number, length: number) => void): void {
  if (r.kind === 'backing') return;
  if (r.kind === 'zero' && sparse !== 0) {
    zeros(r.pos, r.n);
    return;
  }
  const view = buf.subarray(0, r.n);
  if (r.kind === 'data') src.readInto(view, r.pos); else view.fill(0);
  if (sparse === 0) {
    dst.write(r.pos, view);
    return;
  }
  for (const run of sparseRuns(view, r.pos, sparse)) {
    if (run.data) dst.write(run.start, view.subarray(run.start - r.pos, run.start - r.pos + run.length));
    else zeros(run.start, run.length);
  }
}

/**
 * convert -S into a new image: qemu-img's requests written as it writes them (writeRequest),
 * in guest order, zeros left out (a new image reads as zeros).
 */
export function copyGuestSparse(src: GuestSource, dst: Qcow2Image, sparse: number, progress?: ProgressFn): void {
  const size = Math.min(src.size, dst.size);
  const requests = convertRequests(src, size, dst.cs, { sparse });
  const report = requestProgress(requests, sparse === 0, progress);
  const buf = Buffer.allocUnsafe(copyBuffer(dst.cs));
  for (const r of requests) {
    writeRequest(dst, src, r, buf, sparse, () => undefined);
    dst.maybeCommit();
    report(r);
  }
}

/**
 * convert -O raw: a new raw file of the source's size (rounded up to a sector, as qemu-img
 * sizes it) holding its guest view, written as qemu-img writes it (writeRequest): zero areas,
 * and zero runs of at least -S (default 4 KiB) in data, are left as holes, except the first
 * block, which the file driver writes when it creates the file (create.ts writeNewRawImage);
 * with -S 0 every byte is written. Never overwrites; a failure leaves nothing behind.
 */
export function writeImportedRaw(imagePath: string, src: GuestSource, opts: WriteImportOptions = {}): void {
  const host = opts.host ?? localFs;
  if (host.lstat(imagePath) !== undefined) throw existsError(imagePath, 'image');
  const size = Math.ceil(src.size / 512) * 512;
  const sparse = opts.sparse ?? DEFAULT_SPARSE;
  const pub = new Publication(host);
  try {
    const f = new Unflushed(pub.create(imagePath, 'image'));
    f.truncate(size);
    if (size > 0) f.write(0, new Uint8Array(size < 4096 ? 512 : 4096));
    const requests = convertRequests(src, src.size, 512, { sparse });
    const report = requestProgress(requests, sparse === 0, opts.progress);
    const buf = Buffer.allocUnsafe(copyBuffer(512));
    const file = { write: (offset: number, data: Uint8Array) => f.write(offset, data) };
    for (const r of requests) {
      writeRequest(file, src, r, buf, sparse, () => undefined);
      report(r);
    }
    pub.publish({ durable: opts.durable ?? true });
  } catch (e) {
    pub.abort();
    throw e;
  }
}

/**
 * convert -n: the whole guest view of `src` over an existing image, as qemu-img writes into a
 * target it did not create (no zero-init; writeRequest): data copied, zero areas and zero runs of
 * at least -S in data written as zeros and unmapped where they can be; with -S 0 zeros are
 * written as data.
 */
export function copyGuestOver(src: GuestSource, dst: Qcow2Image, opts: { progress?: ProgressFn; sparse?: number } = {}): void {
  const size = Math.min(src.size, dst.size);
  const sparse = opts.sparse ?? DEFAULT_SPARSE;
  const requests = convertRequests(src, size, dst.cs, { sparse });
  const report = requestProgress(requests, sparse === 0, opts.progress);
  const buf = Buffer.allocUnsafe(copyBuffer(dst.cs));
  for (const r of requests) {
    writeRequest(dst, src, r, buf, sparse, (offset, length) => dst.writeZeroes(offset, length, { unmap: true }));
    dst.maybeCommit();
    report(r);
  }
}

/**
 * convert -B (qemu-img's target_has_backing): what the source's top layer holds, into an overlay
 * whose backing file stands for the rest (a new one, or with -n an existing image). Areas the
 * top layer does not hold are not written, nor zeros past the end of a new overlay's backing
 * file; zero areas, and zero runs of at least -S among its data, are written as zeros (the
 * backing file may hold data there); its data is copied (writeRequest).
 */
export function copyTopLayer(src: GuestSource, dst: Qcow2Image, progress?: ProgressFn, sparse = DEFAULT_SPARSE, backingSize?: number): void {
  const size = Math.min(src.size, dst.size);
  const requests = convertRequests(src, size, dst.cs, { sparse, topLayer: true, ...(backingSize !== undefined ? { backingSize } : {}) });
  const report = requestProgress(requests, sparse === 0, progress);
  const buf = Buffer.allocUnsafe(copyBuffer(dst.cs));
  for (const r of requests) {
    writeRequest(dst, src, r, buf, sparse, (offset, length) => dst.writeZeroes(offset, length, { unmap: true }));
    dst.maybeCommit();
    report(r);
  }
}
