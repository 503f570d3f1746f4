// Reading guest data: host-contiguous clusters are read with one read into the caller's buffer,
// across L2 tables and through backing chains. Counted on the files through a counting HostFs
// (the seam every open goes through), on a chain whose layout qemu-io made.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { BlockFile, MemoryBlockFile } from '../../../provider/qcow2/io/blockfile';
import { HostFs, localFs } from '../../../provider/qcow2/io/hostfs';
import { Qcow2Image } from '../../../provider/qcow2/guest/qcow2';
import { openSource } from '../../../provider/qcow2/guest/sources/open';
import { copyGuest } from '../../../provider/qcow2/ops/convert';
import { planFor } from '../../helpers/images';
import { writePlan } from '../../../provider/qcow2/ops/create';
import { qemuImg, qemuIo, skipWithoutQemuTools, tempDir } from './harness';

/** A BlockFile that counts the reads that reach it. */
class CountingFile implements BlockFile {
  reads = 0;
  constructor(readonly inner: BlockFile) {}
  read(o: number, l: number) { this.reads++; return this.inner.read(o, l); }
  readInto(t: Uint8Array, o: number) { this.reads++; this.inner.readInto(t, o); }
  write(o: number, d: Uint8Array) { this.inner.write(o, d); }
  size() { return this.inner.size(); }
  truncate(n: number) { this.inner.truncate(n); }
  flush() { this.inner.flush(); }
  close() { this.inner.close(); }
  allocatedSize() { return this.inner.allocatedSize(); }
}

/** The local host, with every opened file counted by name. */
function countingHost(): { host: HostFs; reads: Map<string, CountingFile> } {
  const reads = new Map<string, CountingFile>();
  const unwrap = (f: BlockFile) => (f instanceof CountingFile ? f.inner : f);
  const host: HostFs = {
    ...localFs,
    open(p, mode, name) {
      const o = localFs.open(p, mode, name);
      const c = new CountingFile(o.file);
      reads.set(path.basename(p), c);
      return { file: c, size: o.size };
    },
    lock: (f, name, mode) => localFs.lock(unwrap(f), name, mode),
    extent: (f, off, len, size) => localFs.extent(unwrap(f), off, len, size),
    punchHole: (f, off, len) => localFs.punchHole(unwrap(f), off, len),
  };
  return { host, reads };
}

describe.skipIf(skipWithoutQemuTools('guest reads'))('reading guest data', () => {
  const root = tempDir('reads');
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

  it('flattening_a_chain_reads_each_host_contiguous_run_once', () => {
    // base: 64 MiB written in one sequential write (its data clusters follow its L2 table);
    // top: three writes over it, so the base's run is split in four.
    const base = path.join(root, 'base.qcow2');
    const top = path.join(root, 'top.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', base, '64M']);
    qemuIo(['-c', 'write -P 0x11 0 64M', base]);
    qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    qemuIo(['-c', 'write -P 0x22 5M 64k', '-c', 'write -P 0x33 20M 1M', '-c', 'write -P 0x44 50M 64k', top]);

    const { host, reads } = countingHost();
    const src = openSource(top, 'qcow2', { host });
    const dst = new MemoryBlockFile();
    writePlan(planFor({ size: 64n << 20n }), dst);
    const out = Qcow2Image.over(dst, { writable: true });
    const opened = new Map([...reads].map(([k, f]) => [k, f.reads]));
    copyGuest(src, out);
    out.close();
    src.close();

    // What the copy read: 64 windows of 1 MiB; in each, one read per run of the base between
    // the top's writes (3 writes split at most 6 chunk-runs more), one per write in the top,
    // and each image's L2 table and refcount block (block status asks whether an image is
    // preallocated). Reading cluster by cluster would be over 1024 reads.
    const copyReads = (name: string) => reads.get(name)!.reads - opened.get(name)!;
    expect(copyReads('base.qcow2')).toBeLessThanOrEqual(64 + 6 + 2);
    expect(copyReads('top.qcow2')).toBeLessThanOrEqual(3 + 2);

    // And it read the right bytes.
    const want = Buffer.alloc(64 << 20, 0x11);
    want.fill(0x22, 5 << 20, (5 << 20) + 65536);
    want.fill(0x33, 20 << 20, 21 << 20);
    want.fill(0x44, 50 << 20, (50 << 20) + 65536);
    expect(Qcow2Image.over(dst).read(0, 64 << 20).equals(want)).toBe(true);
  });

  it('a_run_spanning_l2_tables_is_one_read', () => {
    // 512-byte clusters: an L2 table maps 32 KiB, so the 1 MiB guest view of a data-file-raw
    // image (host offset = guest offset) spans 32 tables: one mapping, one read of the data file.
    const img = path.join(root, 'small-clusters.qcow2');
    const data = path.join(root, 'small-clusters.raw');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `cluster_size=512,data_file=${data},data_file_raw=on`, img, '1M']);
    qemuIo(['-c', 'write -P 0x5a 0 1M', img]);
    const { host, reads } = countingHost();
    const src = openSource(img, 'qcow2', { host });
    const m = (src as Qcow2Image).lookup(0, 1 << 20);
    const buf = Buffer.alloc(1 << 20);
    src.readInto(buf, 0);
    src.close();
    expect(m).toMatchObject({ kind: 'allocated', length: 1 << 20, host: 0 });
    expect(reads.get('small-clusters.raw')!.reads).toBe(1);
    expect(buf.equals(Buffer.alloc(1 << 20, 0x5a))).toBe(true);
  });
});
