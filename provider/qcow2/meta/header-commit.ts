// The header write that commits a change (amend, resize, rebase, a guest write's autoclear
// bits): one write of at most one page at offset 0, so that a crash leaves the old header or
// the new one, never half of each (a page is written whole even when a process is killed
// mid-write). QEMU rewrites all of cluster 0; bytes past the header's end are not part of it,
// so stale bytes there (past the first page) are left as they are.

import { BlockFile } from '../io/blockfile';
import { Qcow2Error } from '../../model/errors';
import { Header, encodeHeader, headerAreaEnd } from '../spec/header';

/** The unit the commit is atomic in. */
export const COMMIT_PAGE = 4096;

/** What to write: `before` (flushed first: bytes the old header does not use), then `commit` at 0. */
export interface HeaderCommit {
  before?: { offset: number; data: Uint8Array };
  commit: Uint8Array;
}

/**
 * Plan the commit of header `h` into `file`. A header longer than a page (kilobytes of
 * extensions or names) writes its tail first, where the old header does not look, then the
 * first page; when the old header also reaches past the first page, no single write can switch
 * between them, and the change is refused.
 */
export function planHeaderCommit(h: Header, clusterSize: number, file: BlockFile): HeaderCommit {
  const full = encodeHeader(h, clusterSize);
  const page = Math.min(clusterSize, COMMIT_PAGE);
  const end = headerAreaEnd(full);
  if (end <= page) return { commit: full.subarray(0, page) };
  const old = file.read(0, Math.min(clusterSize, file.size()));
  if (headerAreaEnd(old) > page) {
    throw new Qcow2Error('UNSUPPORTED',
      `The image header would be ${end} bytes and is ${headerAreaEnd(old)} bytes now: a change between two headers longer than ` +
      `${page} bytes cannot be committed with one write. Shorten the names in it (backing file, data file), or use qemu-img`);
  }
  return { before: { offset: page, data: full.subarray(page, end) }, commit: full.subarray(0, page) };
}

/** Write a planned commit: the tail, flushed, then the page. The caller flushes after. */
export function writeHeaderCommit(file: BlockFile, c: HeaderCommit): void {
  if (c.before) {
    file.write(c.before.offset, c.before.data);
    file.flush();
  }
  file.write(0, c.commit);
}
