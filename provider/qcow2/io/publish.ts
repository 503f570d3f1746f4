// One way to make new files appear (create, convert, and the qemu-img engine's create): each
// is written under a hidden temporary name beside its target, made durable, then linked into
// place with link(2), which fails rather than replace anything that appeared meanwhile; then the
// temporary name goes and the folder is made durable. A crash leaves at most a hidden temporary
// file, never a half-written one at the target. Every message names the target, never a
// temporary name. Files are linked in the order staged: a data file before the image naming it.

import * as path from 'path';
import { Qcow2Error } from '../../model/errors';
import { BlockFile } from './blockfile';
import { HostFs, localFs } from './hostfs';

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

  constructor(private readonly host: HostFs = localFs) {}

  /** A new empty file under a temporary name beside `target`, to become `target`. */
  create(target: string, kind: PublishedKind): BlockFile {
    const temp = tempName(target);
    const { file } = this.host.open(temp, 'create', target);
    this.staged.push({ temp, target, kind, file });
    return file;
  }

  /** A private temporary folder beside `target`, for a tool that makes the files itself. */
  folderBeside(target: string): string {
    const dir = this.host.mkdtemp(path.join(path.dirname(target), '.qcow2-tmp-'));
    this.folders.push(dir);
    return dir;
  }

  /** Publish `temp` (made in a folder from folderBeside) as `target`. */
  stage(temp: string, target: string, kind: PublishedKind): void {
    this.staged.push({ temp, target, kind });
  }

  /**
   * Make every staged file durable, link each into place in the order staged, then drop the
   * temporary names and make the folders durable. With `durable: false` (qemu-img convert's
   * default cache mode, unsafe) the flushes are skipped: the files still appear only complete,
   * but a power failure soon after may lose what the page cache held. Throws EXISTS (named as the target) when a
   * target appeared meanwhile; call abort() after any failure.
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
    for (const s of this.staged) this.host.unlink(s.temp);
    if (durable) for (const dir of new Set(this.staged.map((s) => path.dirname(s.target)))) this.host.fsyncDir(dir);
    this.staged.length = 0;
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
}

/** A hidden name beside `target`, unique to this process and moment. */
function tempName(target: string): string {
  const unique = `${process.pid}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  return path.join(path.dirname(target), `.${path.basename(target)}.qcow2-tmp-${unique}`);
}
