// The download cache, keyed by checksum: ten images from one cloud image download it once.
//
// Layout under the cache folder:
//   sha256/<hex>, sha512/<hex>   verified files, read-only; only ever created by link(2) from a
//                                 partial file whose digest matched, so nothing unverified is served
//   partial/<alg>-<hex>           a download in progress, or one a later fetch resumes
//   partial/<alg>-<hex>.json      what If-Range needs to resume it (ETag, Last-Modified, size)
//   locks/<alg>-<hex>.lock        the key's lock file (empty; never deleted, see below)
//
// One key, one downloader, across processes: a fetch takes QEMU-style OFD locks on the key's lock
// file (provider/qcow2/io/lock.ts): the write mode to download or evict, the read mode while it
// serves the file (so eviction skips files in use). OFD locks vanish with their process, so a
// crashed download leaves no stale lock, only a partial file the next fetch resumes. Lock files
// are never deleted: a process could hold one open while another unlinks and recreates the name,
// and both would then think they hold the lock.
// Where the locks cannot be had (not Linux, or koffi missing), each fetch downloads to a private
// temp name and publishes with link(2), which is atomic: concurrent fetches may then download
// twice, and never serve anything unverified.

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { fsyncDir } from '../../qcow2/ops/create';
import { Qcow2Error } from '../../model/errors';
import { ImageLock, lockImage } from '../../qcow2/io/lock';
import { parseSize } from '../../model/size';
import { Checksum, verifyChecksum } from './checksum';
import { HttpClient } from './client';
import { DownloadOptions, tempNameFor } from './download';
import { FileSink } from './sink';
import { canResumeLater, ResumeState, transfer } from './transfer';
import { redactUrl } from './url';

/** Environment variable naming the cache folder. */
export const CACHE_DIR_ENV = 'PULUMI_QCOW2_CACHE_DIR';
/** Environment variable giving the cache's size limit (bytes, or qemu-img syntax: `20G`). */
export const CACHE_MAX_SIZE_ENV = 'PULUMI_QCOW2_CACHE_MAX_SIZE';
/** The size limit when neither option nor environment gives one: 20 GiB. */
export const DEFAULT_CACHE_MAX_SIZE = 20 * 2 ** 30;

/** Where the cache lives and how large it may grow. */
export interface CacheOptions {
  /** The cache folder. Default $PULUMI_QCOW2_CACHE_DIR, else $XDG_CACHE_HOME/pulumi-qcow2, else ~/.cache/pulumi-qcow2. */
  dir?: string;
  /**
   * Bytes the cache may hold (verified and partial files); past it, the least recently used
   * files not in use are deleted after each download. Default $PULUMI_QCOW2_CACHE_MAX_SIZE, else 20 GiB.
   * A file larger than the limit is still downloaded and served.
   */
  maxSize?: number | bigint | string;
  /** Environment read for the defaults. Default `process.env`. */
  env?: NodeJS.ProcessEnv;
  /**
   * Serialize downloads of one checksum across processes with OFD locks (default: when they
   * work here). `false` for file systems whose locks cannot be trusted: each fetch then
   * downloads to its own temp file, so concurrent fetches may download twice, and eviction
   * cannot see which files other processes are using.
   */
  locks?: boolean;
}

/** A verified source file in the cache, held against eviction until released. */
export interface CachedSource {
  /** The verified file (read-only; do not change or delete it). */
  readonly path: string;
  readonly size: number;
  readonly checksum: Checksum;
  /** True when the file was already in the cache and nothing was downloaded. */
  readonly fromCache: boolean;
  /** Let the cache evict the file again (idempotent). Processes that exit release implicitly. */
  release(): Promise<void>;
}

/** The cache folder the options and environment name. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env[CACHE_DIR_ENV]) return path.resolve(env[CACHE_DIR_ENV]!);
  const xdg = env.XDG_CACHE_HOME;
  const base = xdg !== undefined && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.cache');
  return path.join(base, 'pulumi-qcow2');
}

function cacheMaxSize(value: number | bigint | string | undefined, env: NodeJS.ProcessEnv): number {
  const property = value !== undefined ? 'cacheMaxSize' : CACHE_MAX_SIZE_ENV;
  const v = value ?? env[CACHE_MAX_SIZE_ENV];
  if (v === undefined || v === '') return DEFAULT_CACHE_MAX_SIZE;
  let n: bigint;
  try {
    n = typeof v === 'string' ? parseSize(v.trim(), { name: 'cache size' }) : BigInt(v);
  } catch (e) {
    throw new Qcow2Error('INVALID_OPTION', `${property}: ${(e as Error).message.split('\n')[0]} (got '${String(v)}'; e.g. 20G)`, { property });
  }
  if (n < 0n) throw new Qcow2Error('INVALID_OPTION', `${property}: the cache size cannot be negative`, { property });
  return n > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(n);
}

const POLL_START_MS = 50;
const POLL_MAX_MS = 500;

/** A key's lock file, opened; the lock modes are taken and switched on it. */
class KeyLock {
  private lock: ImageLock | undefined;

  private constructor(
    private readonly fd: number,
    private readonly file: string,
  ) {}

  static open(file: string): KeyLock {
    return new KeyLock(fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644), file);
  }

  /** Take (or switch to) `mode`; false when another holder conflicts. */
  take(mode: 'read' | 'write'): boolean {
    try {
      if (this.lock === undefined) this.lock = lockImage(this.fd, this.file, mode);
      else if (this.lock.mode !== mode) this.lock.change(mode);
      return true;
    } catch (e) {
      if (Qcow2Error.isInstance(e) && e.code === 'LOCKED') return false;
      throw e;
    }
  }

  close(): void {
    this.lock?.release();
    this.lock = undefined;
    fs.closeSync(this.fd);
  }
}

/** Whether OFD locks work here (checked once). */
let locksWork: boolean | undefined;

function tryLocks(dir: string): boolean {
  if (locksWork !== undefined) return locksWork;
  const probe = path.join(dir, 'locks', '.probe.lock');
  try {
    const l = KeyLock.open(probe);
    try {
      locksWork = l.take('read');
    } finally {
      l.close();
    }
  } catch (e) {
    if (!Qcow2Error.isInstance(e) || e.code !== 'UNSUPPORTED') throw e;
    locksWork = false;
  }
  return locksWork;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

function statOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.statSync(file);
  } catch {
    return undefined;
  }
}

/** The download cache in one folder. */
export class SourceCache {
  readonly dir: string;
  readonly maxSize: number;
  private readonly locks: boolean;
  /** Downloads this process runs, by key: waiters in the same process wake when one ends. */
  private static readonly running = new Map<string, Promise<unknown>>();

  constructor(options: CacheOptions = {}) {
    const env = options.env ?? process.env;
    this.dir = options.dir !== undefined ? path.resolve(options.dir) : defaultCacheDir(env);
    this.maxSize = cacheMaxSize(options.maxSize, env);
    this.locks = options.locks ?? true;
  }

  private key(c: Checksum): string {
    return `${c.algorithm}-${c.hex}`;
  }

  /** Where the verified file for `c` is (whether or not it is there). */
  entryPath(c: Checksum): string {
    return path.join(this.dir, c.algorithm, c.hex);
  }

  private partialPath(c: Checksum): string {
    return path.join(this.dir, 'partial', this.key(c));
  }

  private lockPath(c: Checksum): string {
    return path.join(this.dir, 'locks', `${this.key(c)}.lock`);
  }

  private prepare(): void {
    try {
      for (const sub of ['sha256', 'sha512', 'partial', 'locks']) fs.mkdirSync(path.join(this.dir, sub), { recursive: true });
    } catch (e) {
      throw new Qcow2Error('IO', `Could not create the download cache folder ${this.dir} (${(e as NodeJS.ErrnoException).code ?? 'error'}); set ${CACHE_DIR_ENV} to a writable folder`, {
        file: this.dir,
        cause: e,
      });
    }
  }

  /**
   * The verified file for `checksum`, downloading `url` when the cache does not have it. One
   * download per key at a time across processes; the others wait for it and then serve its
   * file. A partial file from an earlier, broken download is resumed. On failure nothing is
   * left except a partial file worth resuming (the connection kept breaking on a server that
   * supports ranges, or the download was aborted).
   */
  async fetch(url: URL, checksum: Checksum, options: Omit<DownloadOptions, 'checksum'> = {}): Promise<CachedSource> {
    this.prepare();
    if (!this.locks || !tryLocks(this.dir)) return this.fetchUnlocked(url, checksum, options);
    const key = this.key(checksum);
    let poll = POLL_START_MS;
    for (;;) {
      const lock = KeyLock.open(this.lockPath(checksum));
      let handed = false;
      try {
        // Read mode to serve the entry; write mode to download it (or to serve it, should it
        // appear meanwhile). Both are refused while another fetch holds the other mode.
        const exists = fs.existsSync(this.entryPath(checksum));
        if (exists ? lock.take('read') : lock.take('write')) {
          const hit = this.serve(checksum, lock, true, options);
          if (hit !== undefined || !exists) {
            const served = hit ?? (await this.download(url, checksum, lock, options));
            handed = true;
            return served;
          }
          continue; // evicted between the look and the lock: look again
        }
      } finally {
        if (!handed) lock.close();
      }
      // Another fetch holds the key: wait for it (in this process, for its promise).
      const mine = SourceCache.running.get(`${this.dir}\0${key}`);
      if (mine !== undefined) {
        await mine.catch(() => undefined);
        continue;
      }
      this.reportWaiting(checksum, options);
      // Jitter: two processes that both probed (and so both backed off) must not meet again.
      await sleep(poll * (0.5 + Math.random()), options.signal);
      poll = Math.min(poll * 2, POLL_MAX_MS);
    }
  }

  /** While another process downloads a key, report its partial file's growth. */
  private reportWaiting(checksum: Checksum, options: Omit<DownloadOptions, 'checksum'>): void {
    if (options.onProgress === undefined) return;
    const st = statOrUndefined(this.partialPath(checksum));
    if (st === undefined) return;
    const state = this.readState(checksum);
    options.onProgress({ received: st.size, ...(state.total !== undefined ? { total: state.total } : {}) });
  }

  /** The entry for `checksum` if it is there (held by `lock`, read mode), else undefined. */
  private serve(checksum: Checksum, lock: KeyLock | undefined, fromCache: boolean, options: Omit<DownloadOptions, 'checksum'>): CachedSource | undefined {
    const file = this.entryPath(checksum);
    const st = statOrUndefined(file);
    if (st === undefined) return undefined;
    if (lock !== undefined && !lock.take('read')) return undefined;
    const cap = options.maxSize === undefined ? undefined : Number(options.maxSize);
    if (cap !== undefined && st.size > cap) {
      throw new Qcow2Error('REFUSED', `The cached file for ${this.key(checksum).replace('-', ':')} is ${st.size} bytes, over the ${cap} bytes allowed (sourceMaxSize); raise sourceMaxSize`, {
        property: 'sourceMaxSize',
      });
    }
    // Access time is what eviction orders by; set it here rather than trust mount options
    // (best effort: in a cache shared between users, only the file's owner may set it).
    try {
      fs.utimesSync(file, new Date(), st.mtime);
    } catch {
      /* eviction then sees the time of the last use by the owner */
    }
    options.onProgress?.({ received: st.size, total: st.size });
    let released = false;
    return {
      path: file,
      size: st.size,
      checksum,
      fromCache,
      release: async () => {
        if (released) return;
        released = true;
        lock?.close();
      },
    };
  }

  private readState(checksum: Checksum): ResumeState {
    try {
      const s = JSON.parse(fs.readFileSync(`${this.partialPath(checksum)}.json`, 'utf8')) as ResumeState;
      return typeof s === 'object' && s !== null ? s : {};
    } catch {
      return {};
    }
  }

  private writeState(checksum: Checksum, state: ResumeState): void {
    const file = `${this.partialPath(checksum)}.json`;
    const tmp = tempNameFor(file, 'tmp');
    fs.writeFileSync(tmp, JSON.stringify(state));
    fs.renameSync(tmp, file);
  }

  private removePartial(checksum: Checksum): void {
    fs.rmSync(this.partialPath(checksum), { force: true });
    fs.rmSync(`${this.partialPath(checksum)}.json`, { force: true });
  }

  /** Download into the key's partial file (resuming it) under the write lock, verify, publish. */
  private async download(url: URL, checksum: Checksum, lock: KeyLock, options: Omit<DownloadOptions, 'checksum'>): Promise<CachedSource> {
    const runKey = `${this.dir}\0${this.key(checksum)}`;
    const run = this.downloadLocked(url, checksum, options);
    SourceCache.running.set(runKey, run);
    try {
      await run;
    } finally {
      SourceCache.running.delete(runKey);
    }
    const served = this.serve(checksum, lock, false, options);
    if (served === undefined) throw new Qcow2Error('IO', `The download cache lost ${this.entryPath(checksum)} as it was published`, { file: this.dir });
    await this.evict(new Set([this.entryPath(checksum)]));
    return served;
  }

  private async downloadLocked(url: URL, checksum: Checksum, options: Omit<DownloadOptions, 'checksum'>): Promise<void> {
    const partial = this.partialPath(checksum);
    const resuming = fs.existsSync(partial);
    const state: ResumeState = resuming ? this.readState(checksum) : {};
    if (resuming && state.ranges === undefined) state.ranges = true; // try; a 200 answer starts over
    const client = new HttpClient(options);
    let sink: FileSink | undefined;
    let keep = false;
    try {
      sink = await FileSink.open(partial, checksum.algorithm, resuming ? 'r+' : 'wx');
      await transfer(client, url, sink, { ...options, onResumeState: (s) => this.writeState(checksum, s) }, state);
      await this.publish(sink, partial, checksum, url);
    } catch (e) {
      keep = sink !== undefined && sink.offset > 0 && state.ranges === true && (canResumeLater(e) || options.signal?.aborted === true);
      throw e;
    } finally {
      await sink?.close();
      await client.close();
      if (keep) this.writeState(checksum, state);
      else this.removePartial(checksum);
    }
  }

  /**
   * Make `file` (the sink's) the entry for `checksum` if its digest matches: flushed, read-only,
   * then link(2), which never replaces. EEXIST means another fetch published the same bytes.
   */
  private async publish(sink: FileSink, file: string, checksum: Checksum, url: URL): Promise<void> {
    verifyChecksum(checksum, sink.digest.current(), redactUrl(url));
    await sink.sync();
    await sink.close();
    fs.chmodSync(file, 0o444);
    try {
      fs.linkSync(file, this.entryPath(checksum));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    fsyncDir(path.dirname(this.entryPath(checksum)));
  }

  /** Without locks: a private temp file, verified, then link(2); EEXIST means another got there first. */
  private async fetchUnlocked(url: URL, checksum: Checksum, options: Omit<DownloadOptions, 'checksum'>): Promise<CachedSource> {
    const hit = this.serve(checksum, undefined, true, options);
    if (hit !== undefined) return hit;
    const temp = tempNameFor(this.partialPath(checksum), 'part');
    const client = new HttpClient(options);
    let sink: FileSink | undefined;
    try {
      sink = await FileSink.open(temp, checksum.algorithm, 'wx');
      await transfer(client, url, sink, options);
      await this.publish(sink, temp, checksum, url);
    } finally {
      await sink?.close();
      await client.close();
      fs.rmSync(temp, { force: true });
    }
    const served = this.serve(checksum, undefined, false, options)!;
    await this.evict(new Set([served.path]));
    return served;
  }

  /** Files the cache holds: verified entries and partial downloads, with size and last use. */
  list(): { path: string; size: number; lastUsed: number; partial: boolean; key: string }[] {
    const out: { path: string; size: number; lastUsed: number; partial: boolean; key: string }[] = [];
    for (const alg of ['sha256', 'sha512']) {
      for (const name of readdir(path.join(this.dir, alg))) {
        const st = statOrUndefined(path.join(this.dir, alg, name));
        if (st?.isFile()) out.push({ path: path.join(this.dir, alg, name), size: st.size, lastUsed: st.atimeMs, partial: false, key: `${alg}-${name}` });
      }
    }
    for (const name of readdir(path.join(this.dir, 'partial'))) {
      if (name.endsWith('.json') || name.startsWith('.')) continue;
      const st = statOrUndefined(path.join(this.dir, 'partial', name));
      if (st?.isFile()) out.push({ path: path.join(this.dir, 'partial', name), size: st.size, lastUsed: st.mtimeMs, partial: true, key: name });
    }
    return out;
  }

  /**
   * Delete least recently used files until the cache fits its size limit, skipping `keep` and
   * files in use (served and not released, or being downloaded) by any process.
   */
  async evict(keep: ReadonlySet<string> = new Set()): Promise<void> {
    const files = this.list();
    let total = files.reduce((s, f) => s + f.size, 0);
    if (total <= this.maxSize) return;
    const locking = this.locks && tryLocks(this.dir);
    for (const f of files.sort((a, b) => a.lastUsed - b.lastUsed)) {
      if (total <= this.maxSize) break;
      if (keep.has(f.path)) continue;
      const lock = locking ? KeyLock.open(path.join(this.dir, 'locks', `${f.key}.lock`)) : undefined;
      try {
        if (lock !== undefined && !lock.take('write')) continue;
        fs.rmSync(f.path, { force: true });
        if (f.partial) fs.rmSync(`${f.path}.json`, { force: true });
        total -= f.size;
      } finally {
        lock?.close();
      }
    }
  }
}

function readdir(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}
