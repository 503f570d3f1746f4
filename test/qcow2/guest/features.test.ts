// Data-path behaviours beside plain I/O: QEMU's write locks held while writing (image and data
// file), autoclear discipline (unknown bits cleared on a read-write open, bitmaps bit 0 cleared
// on the first guest write, data-file-raw kept), writes into images with internal snapshots
// (shared L2 tables and clusters are copied, never changed in place), compressed-cluster reads.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { openImageForWrite } from '../../../provider/engines/native/ops';
import * as C from '../../../provider/qcow2/spec/constants';
import { Qcow2Image } from '../../../provider/qcow2/guest/qcow2';
import { findLockHolders } from '../../../provider/qcow2/io/lock';
import { prng, qemuImg, qemuIo, runQemuImg, runQemuIo, skipWithoutQemuTools, tempDir } from './harness';

const FIXTURES = path.join(__dirname, '..', '..', 'fixtures');

describe.skipIf(skipWithoutQemuTools('data features'))('data path features', () => {
  const root = tempDir('features');
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

  it('write_lock_held_on_image_and_data_file_while_writing', () => {
    const dir = fs.mkdtempSync(path.join(root, 'lock-'));
    const img = path.join(dir, 'img.qcow2');
    const data = path.join(dir, 'data.raw');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${data},data_file_raw=on`, img, '1M']);
    const w = openImageForWrite(img);
    try {
      w.write(0, Buffer.alloc(4096, 1));
      const info = runQemuImg(['info', img]);
      expect(info.status).toBe(1);
      expect(info.stderr).toContain('Failed to get shared "write" lock');
      const raw = runQemuIo(['-f', 'raw', '-c', 'read 0 512', data]);
      expect(raw.status).toBe(1);
      expect(raw.stderr).toContain('Failed to get "write" lock');
    } finally {
      w.close();
    }
    expect(runQemuImg(['info', img]).status).toBe(0);
  });

  it('refuses_to_write_an_image_qemu_io_holds', () => {
    const dir = fs.mkdtempSync(path.join(root, 'held-'));
    const img = path.join(dir, 'img.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', img, '1M']);
    // qemu-io holds the image while it sleeps; open it from here meanwhile.
    const { spawn } = require('child_process') as typeof import('child_process');
    const child = spawn('qemu-io', ['-f', 'qcow2', '-c', 'sleep 30000', img], { stdio: 'ignore' });
    try {
      // Wait (by polls, not by the clock) until qemu-io holds its write lock, then open once.
      for (let i = 0; i < 600 && !findLockHolders(img).some((h) => h.uses.includes('write')); i++) {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
      }
      let err: unknown;
      try {
        openImageForWrite(img).close();
      } catch (e) {
        err = e;
      }
      expect(String((err as Error)?.message)).toMatch(/Failed to get "write" lock|Failed to get shared "write" lock/);
    } finally {
      child.kill();
    }
  });

  it('unknown_autoclear_bits_cleared_on_read_write_open_data_file_raw_kept', () => {
    const dir = fs.mkdtempSync(path.join(root, 'autoclear-'));
    const img = path.join(dir, 'img.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${path.join(dir, 'd.raw')},data_file_raw=on`, img, '1M']);
    const b = fs.readFileSync(img);
    b.writeBigUInt64BE(b.readBigUInt64BE(88) | (1n << 7n), 88);
    fs.writeFileSync(img, b);
    openImageForWrite(img).close();
    const after = fs.readFileSync(img).readBigUInt64BE(88);
    expect(after & (1n << 7n)).toBe(0n);
    expect(after & C.QCOW2_AUTOCLEAR_DATA_FILE_RAW).toBe(C.QCOW2_AUTOCLEAR_DATA_FILE_RAW);
    const w = openImageForWrite(img);
    w.write(512, Buffer.alloc(1024, 9));
    w.writeZeroes(0, 65536);
    w.discard(65536 * 2, 65536);
    w.close();
    expect(fs.readFileSync(img).readBigUInt64BE(88)).toBe(C.QCOW2_AUTOCLEAR_DATA_FILE_RAW);
    expect(runQemuImg(['compare', '-f', 'raw', '-F', 'qcow2', path.join(dir, 'd.raw'), img]).stdout).toContain('Images are identical.');
  });

  it('refuses_to_write_a_dirty_or_corrupt_image_untouched', () => {
    const dir = fs.mkdtempSync(path.join(root, 'dirty-'));
    for (const [bit, msg] of [[C.QCOW2_INCOMPAT_DIRTY, /dirty/], [C.QCOW2_INCOMPAT_CORRUPT, /corrupt/]] as const) {
      const img = path.join(dir, `i${bit}.qcow2`);
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', img, '1M']);
      const b = fs.readFileSync(img);
      b.writeBigUInt64BE(b.readBigUInt64BE(72) | bit, 72);
      fs.writeFileSync(img, b);
      expect(() => openImageForWrite(img)).toThrow(msg);
      expect(fs.readFileSync(img).equals(b)).toBe(true);
    }
  });

  it('bitmaps_flagged_in_use_before_the_first_guest_write_and_stored_at_close', () => {
    const img = path.join(fs.mkdtempSync(path.join(root, 'bitmaps-')), 'b.qcow2');
    fs.copyFileSync(path.join(FIXTURES, 'bitmaps-512.qcow2'), img);
    const inUse = () => (JSON.parse(qemuImg(['info', '-U', '--output=json', img])) as { 'format-specific': { data: { bitmaps: Array<{ flags: string[] }> } } })
      ['format-specific'].data.bitmaps.every((b) => b.flags.includes('in-use'));
    const w = openImageForWrite(img);
    // Opening alone does not touch the bitmaps: we have not written guest data yet.
    expect(inUse()).toBe(false);
    w.write(1024, Buffer.alloc(512, 5));
    // Before any guest data reaches the file the bitmaps are flagged in-use; autoclear bit 0 stays.
    expect(inUse()).toBe(true);
    expect(fs.readFileSync(img).readBigUInt64BE(88) & C.QCOW2_AUTOCLEAR_BITMAPS).toBe(C.QCOW2_AUTOCLEAR_BITMAPS);
    w.close();
    expect(inUse()).toBe(false);
    expect(runQemuImg(['check', img]).status).toBe(0);
    expect(runQemuIo(['-f', 'qcow2', '-c', 'read -P 5 1024 512', img]).stdout).toContain('read 512/512');
  });

  for (let seed = 1; seed <= 6; seed++) {
    it(`writes_into_image_with_internal_snapshots_seed_${seed}`, () => {
      const dir = fs.mkdtempSync(path.join(root, 'snap-'));
      const A = path.join(dir, 'a.qcow2'), B = path.join(dir, 'b.qcow2');
      fs.copyFileSync(path.join(FIXTURES, 'snapshots-512.qcow2'), A);
      fs.copyFileSync(A, B);
      const rand = prng(seed * 31);
      const ops: string[] = [];
      const img = openImageForWrite(B);
      for (let i = 0; i < 12; i++) {
        const off = Math.floor(rand() * 128) * 512;
        const len = Math.min(65536 - off, 512 * (1 + Math.floor(rand() * 8)));
        const r = rand();
        if (r < 0.5) {
          const pat = 1 + Math.floor(rand() * 254);
          ops.push(`write -P ${pat} ${off} ${len}`);
          img.write(off, Buffer.alloc(len, pat));
        } else if (r < 0.8) {
          ops.push(`write -z ${off} ${len}`);
          img.writeZeroes(off, len);
        } else {
          ops.push(`discard ${off} ${len}`);
          img.discard(off, len);
        }
      }
      img.close();
      qemuIo(['-f', 'qcow2', ...ops.flatMap((c) => ['-c', c]), A]);
      expect(runQemuImg(['compare', A, B]).stdout, ops.join('\n')).toContain('Images are identical.');
      const chk = runQemuImg(['check', B]);
      expect(chk.status, chk.stdout + chk.stderr).toBe(0);
      // The snapshots still read as before.
      for (const snap of ['first', 'second']) {
        qemuImg(['convert', '-l', snap, '-O', 'raw', A, path.join(dir, `a-${snap}.raw`)]);
        qemuImg(['convert', '-l', snap, '-O', 'raw', B, path.join(dir, `b-${snap}.raw`)]);
        expect(fs.readFileSync(path.join(dir, `a-${snap}.raw`)).equals(fs.readFileSync(path.join(dir, `b-${snap}.raw`)))).toBe(true);
      }
    });
  }

  it('reads_compressed_zlib_and_zstd_clusters', () => {
    for (const type of ['zlib', 'zstd']) {
      const f = path.join(fs.mkdtempSync(path.join(root, 'comp-')), 'c.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', `compression_type=${type},cluster_size=4096`, f, '1M']);
      qemuIo(['-f', 'qcow2', '-c', 'write -c -P 0x5c 0 4k', '-c', 'write -c -P 0x5d 8k 8k', f]);
      const img = Qcow2Image.open(f);
      try {
        expect(img.read(0, 4096).equals(Buffer.alloc(4096, 0x5c))).toBe(true);
        expect(img.read(4096, 4096).equals(Buffer.alloc(4096))).toBe(true);
        expect(img.read(8192, 8192).equals(Buffer.alloc(8192, 0x5d))).toBe(true);
      } finally {
        img.close();
      }
    }
  });
});
