// One way to make new files appear (create, convert, and the qemu-img engine's create): each
// is written under a hidden temporary name beside its target, made durable, then linked into
// place with link(2), which fails rather than replace anything that appeared meanwhile; then the
// temporary names go and the folders are made durable. Every message names the target, never a
// temporary name. Files are linked in the order staged: a data file before the image naming it.
//
// The temporary names are the journal. This module owns their pattern,
// `.TARGET.qcow2-tmp-PID-STAMP-ROLE`: PID the process that made it, STAMP one publication's,
// ROLE `i` for the file that completes the publication (the image, linked last) and `d` for
// the files it depends on (its data file). The temporary names of dependencies are removed
// before the image's, so while any of them exists the image's does too, and the image's
// temporary name linked to the image means the publication completed. A process killed part
// way leaves temporary files only; the next operation on that folder (sweepStale) removes
// those whose process is gone, and when the image was never linked it also unlinks what the
// publication had linked already (a data file without its image), recognised by identity:
// the target and our temporary name are one file.

import * as path from 'path';
import { Qcow2Error } from '../../model/errors';
import { BlockFile } from './blockfile';
import { HostFs, localFs } from './hostfs';
import * as C from '../spec/constants';
import { decodeHeader } from '../spec/header';

/** What a published file is to the user: named so in messages, and the property it comes from. */
export type PublishedKind = 'image' | 'data file';

const WORDS: Record<PublishedKind, { noun: string; property: string }> = {
  image: { noun: 'Image file', property: 'path' },
  'data file': { noun: 'Data file', property: 'data_file' },
};

interface Staged { temp: string; target: string; kind: PublishedKind; file?: BlockFile }

/** The refusal every path gives for a target that exists: we never overwrite a file. */
export function existsError(target: string, kind: PublishedKind, extra = ''): Qcow2Error {
  const w = WORDS[kind];
  return new Qcow2Error('EXISTS', `${w.noun} '${target}' already exists; refusing to overwrite it${extra}`, { file: target, property: w.property });
}

/** A set of new files, published together (or not at all). */
export class Publication {
  private readonly staged: Staged[] = [];
  private readonly folders: string[] = [];
  private readonly linked: Array<{ target: string; id: string | undefined }> = [];
  private readonly swept = new Set<string>();
  /** Shared by every temporary name of this publication. */
  private readonly stamp = `${process.pid}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;

  constructor(private readonly host: HostFs = localFs) {}

  /** A new empty file under a temporary name beside `target`, to become `target`. */
  create(target: string, kind: PublishedKind): BlockFile {
    this.sweep(target);
    const temp = this.tempFor(target, kind);
    const { file } = this.host.open(temp, 'create', target);
    this.staged.push({ temp, target, kind, file });
    return file;
  }

  /** A private temporary folder beside `target`, for a tool that makes the files itself. */
  folderBeside(target: string): string {
    this.sweep(target);
    const dir = this.host.mkdtemp(path.join(path.dirname(target), `.qcow2-tmp-${this.stamp}-`));
    this.folders.push(dir);
    return dir;
  }

  /**
   * Publish `temp` (made in a folder from folderBeside) as `target`: it takes this
   * publication's temporary name beside the target now, so that the journal covers it.
   */
  stage(temp: string, target: string, kind: PublishedKind): void {
    this.sweep(target);
    const named = this.tempFor(target, kind);
    this.host.rename(temp, named);
    this.staged.push({ temp: named, target, kind });
  }

  /**
   * Make every staged file durable, link each into place in the order staged, then drop the
   * temporary names (the image's last) and make the folders durable. With `durable: false`
   * (qemu-img convert's default cache mode, unsafe) the flushes are skipped: the files still
   * appear only complete, but a power failure soon after may lose what the page cache held.
   * Throws EXISTS (named as the target) when a target appeared meanwhile; call abort() after any
   * failure.
   */
  publish(opts: { durable?: boolean } = {}): void {
    const durable = opts.durable ?? true;
    for (const s of this.staged) {
      if (durable) {
        const file = s.file ?? this.host.open(s.temp, 'read', s.target).file;
        file.flush();
        file.close();
      } else {
        s.file?.close();
      }
      s.file = undefined;
    }
    for (const s of this.staged) {
      try {
        this.host.link(s.temp, s.target, s.target);
      } catch (e) {
        throw Qcow2Error.isInstance(e) && e.code === 'EXISTS' ? existsError(s.target, s.kind) : e;
      }
      this.linked.push({ target: s.target, id: this.host.stat(s.temp)?.id });
    }
    const dirs = new Set(this.staged.map((s) => path.dirname(s.target)));
    if (durable) for (const dir of dirs) this.host.fsyncDir(dir);
    const completing = this.staged.filter((s) => s.kind === 'image');
    for (const s of [...this.staged.filter((s) => s.kind !== 'image'), ...completing]) this.host.unlink(s.temp);
    if (durable) for (const dir of dirs) this.host.fsyncDir(dir);
    this.staged.length = 0;
    this.linked.length = 0;
    this.cleanup();
  }

  /**
   * Undo everything: temporary files and folders go, and so do targets this publication linked,
   * while they are still the file it linked (never a file someone else put there). Never throws.
   */
  abort(): void {
    for (const s of this.staged) {
      try { s.file?.close(); } catch { /* closing what failed */ }
    }
    for (const l of this.linked.reverse()) {
      try {
        if (l.id !== undefined && this.host.lstat(l.target)?.id === l.id) this.host.unlink(l.target);
      } catch { /* leave it */ }
    }
    for (const s of this.staged) {
      try { this.host.unlink(s.temp); } catch { /* leave it */ }
    }
    this.staged.length = 0;
    this.linked.length = 0;
    this.cleanup();
  }

  private cleanup(): void {
    for (const dir of this.folders) {
      try { this.host.removeTree(dir); } catch { /* leave it */ }
    }
    this.folders.length = 0;
  }

  private tempFor(target: string, kind: PublishedKind): string {
    return path.join(path.dirname(target), `.${path.basename(target)}${MARK}${this.stamp}-${kind === 'image' ? 'i' : 'd'}`);
  }

  /** Before the first file in a folder: what crashed publications left there goes. */
  private sweep(target: string): void {
    const dir = path.dirname(target);
    if (this.swept.has(dir)) return;
    this.swept.add(dir);
    sweepStale(dir, this.host);
  }
}

const MARK = '.qcow2-tmp-';
/** `.TARGET.qcow2-tmp-PID-STAMP-ROLE`: a temporary file of a publication. */
const FILE_PATTERN = /^\.(.+)\.qcow2-tmp-(\d+)-([0-9a-z]+)-([id])$/;
/** `.qcow2-tmp-PID-STAMP-XXXXXX`: a tool's private folder (mkdtemp adds six characters). */
const FOLDER_PATTERN = /^\.qcow2-tmp-(\d+)-([0-9a-z]+)-[A-Za-z0-9]{6}$/;

/** Whether `name` is one of this module's temporary names (files or folders). */
export function isTemporaryName(name: string): boolean {
  return FILE_PATTERN.test(name) || FOLDER_PATTERN.test(name);
}

interface StaleTemp { name: string; full: string; target: string; pid: number; stamp: string; role: 'i' | 'd'; id: string }

/**
 * Remove what publications whose process is gone left in `dir`: their temporary folders and
 * files, matched by this module's pattern only, and owned by this user. A publication that
 * linked its data file but not its image is undone: the data file goes too, when it is still
 * the very file of our temporary name (same identity). Hosts that cannot tell whether a process
 * is gone (HostFs.processGone absent) are left alone. Never throws: a sweep that cannot read a
 * folder leaves it as it is.
 */
export function sweepStale(dir: string, host: HostFs = localFs): { removed: number; undone: string[] } {
  const result = { removed: 0, undone: [] as string[] };
  const gone = host.processGone?.bind(host);
  if (gone === undefined) return result;
  let names: string[];
  try {
    names = host.readdir(dir);
  } catch {
    return result;
  }
  const mine = (st: { uid?: number } | undefined) => st !== undefined && (st.uid === undefined || host.uid === undefined || st.uid === host.uid);
  const temps: StaleTemp[] = [];
  for (const name of names) {
    const folder = FOLDER_PATTERN.exec(name);
    const file = folder ? null : FILE_PATTERN.exec(name);
    if (!folder && !file) continue;
    const pid = Number(folder ? folder[1] : file![2]);
    if (!gone(pid)) continue;
    const full = path.join(dir, name);
    try {
      const st = host.lstat(full);
      if (!mine(st)) continue;
      if (folder) {
        if (st!.kind === 'directory') { host.removeTree(full); result.removed++; }
        continue;
      }
      if (st!.kind !== 'file') continue;
      const [, target, , stamp, role] = file!;
      temps.push({ name, full, target: path.join(dir, target!), pid, stamp: `${pid}-${stamp}`, role: role as 'i' | 'd', id: st!.id });
    } catch { /* leave it */ }
  }
  // Images first: each one's fate (linked or not) decides its dependencies'.
  const completed = new Map<string, boolean>();
  for (const t of temps.filter((x) => x.role === 'i')) {
    try {
      const done = host.lstat(t.target)?.id === t.id;
      completed.set(t.stamp, done);
      for (const dep of dependenciesOf(t, host)) settle(dep, done, host, result);
      host.unlink(t.full);
      result.removed++;
    } catch { /* leave it */ }
  }
  for (const t of temps.filter((x) => x.role === 'd')) {
    try {
      if (host.lstat(t.full)?.id !== t.id) continue; // settled above
      const done = completed.get(t.stamp);
      const linked = host.lstat(t.target)?.id === t.id;
      // Linked, and its image's temporary name in another folder: that folder's sweep decides.
      if (linked && done === undefined) continue;
      settle(t, done ?? false, host, result);
    } catch { /* leave it */ }
  }
  if (result.removed > 0) host.fsyncDir(dir);
  return result;
}

/** The temporary names of the data file an image's temporary file names (its header says where). */
function dependenciesOf(image: StaleTemp, host: HostFs): StaleTemp[] {
  let name: string | undefined;
  try {
    const { file, size } = host.open(image.full, 'read');
    try {
      const h = decodeHeader(file.read(0, Math.min(size, 1 << C.MAX_CLUSTER_BITS)), { tables: false });
      if ((h.incompatibleFeatures & C.QCOW2_INCOMPAT_DATA_FILE) !== 0n) name = h.dataFile;
    } finally {
      file.close();
    }
  } catch {
    return [];
  }
  if (name === undefined) return [];
  // The name as the create stored it: absolute (resources), or relative to the folder of a
  // command line; one that resolves elsewhere is simply not found here.
  const target = path.resolve(path.dirname(image.target), name);
  const full = path.join(path.dirname(target), `.${path.basename(target)}${MARK}${image.stamp}-d`);
  const st = host.lstat(full);
  if (st?.kind !== 'file') return [];
  return [{ name: path.basename(full), full, target, pid: image.pid, stamp: image.stamp, role: 'd', id: st.id }];
}

/** A dependency's temporary name goes; when its publication did not complete, its target too. */
function settle(dep: StaleTemp, completed: boolean, host: HostFs, result: { removed: number; undone: string[] }): void {
  if (!completed && host.lstat(dep.target)?.id === dep.id) {
    host.unlink(dep.target);
    result.undone.push(dep.target);
  }
  host.unlink(dep.full);
  result.removed++;
  host.fsyncDir(path.dirname(dep.full));
}
