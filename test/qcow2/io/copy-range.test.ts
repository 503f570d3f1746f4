// File-to-file copies (io/copy-range.ts): copy_file_range where the kernel takes it, and the
// buffered fallback where it refuses (EXDEV, ENOSYS, EINVAL, EOPNOTSUPP), where it stops short
// (the end of the input: zeros after it) and where it fails otherwise (the buffered read or
// write then names the file). The refusals are the kernel's own where this machine has them
// (tmpfs to another file system: EXDEV), else given by a binding that refuses.

import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { NodeBlockFile } from '../../../provider/qcow2/io/blockfile';
import { CopyCalls, RangeCopier } from '../../../provider/qcow2/io/copy-range';
import { libc, libcUnavailable } from '../../../provider/qcow2/io/libc';

const { EXDEV, ENOSYS, EINVAL, EOPNOTSUPP, EIO } = os.constants.errno;
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-copy-range-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

function files(name: string, bytes: Buffer, dir = root): { src: NodeBlockFile; dst: NodeBlockFile; out: string; close(): void } {
  const a = path.join(dir, `${name}.src`), out = path.join(root, `${name}.dst`);
  fs.writeFileSync(a, bytes);
  const src = NodeBlockFile.open(a, false, 'the source');
  const dst = NodeBlockFile.createExclusive(out, 'the copy');
  return { src, dst, out, close: () => { src.close(); dst.close(); fs.rmSync(a, { force: true }); } };
}

/** libc's calls, counted, or refusing with `errno` (all, or only the asynchronous ones). */
function calls(errno?: number, opts: { short?: number } = {}): CopyCalls & { made: number } {
  const real = libc()!;
  const c = {
    made: 0,
    copyFileRange(fi: number, oi: number, fo: number, oo: number, n: number): number {
      c.made++;
      return errno !== undefined ? -errno : real.copyFileRange(fi, oi, fo, oo, n);
    },
    async copyFileRangeAsync(fi: number, oi: number, fo: number, oo: number, n: number): Promise<number> {
      c.made++;
      if (errno !== undefined) return -1;
      // A kernel that copies less than asked, then reports the end of the input.
      if (opts.short !== undefined) return oi >= opts.short ? 0 : real.copyFileRange(fi, oi, fo, oo, Math.min(n, opts.short - oi));
      return real.copyFileRangeAsync(fi, oi, fo, oo, n);
    },
  };
  return c;
}

const data = crypto.randomBytes(3 << 20);

describe.skipIf(libcUnavailable() !== undefined)(`copy_file_range (${libcUnavailable() ?? 'bound'})`, () => {
  it('copies_a_range_through_the_kernel_at_any_offsets', async () => {
    const f = files('kernel', data);
    const copier = new RangeCopier();
    await copier.copy(f.src, 12345, f.dst, 4096 + 7, 2 << 20);
    f.close();
    const got = fs.readFileSync(f.out);
    expect(got.length).toBe(4096 + 7 + (2 << 20));
    expect(got.subarray(4096 + 7).equals(data.subarray(12345, 12345 + (2 << 20)))).toBe(true);
    expect(copier.stats).toEqual({ kernel: 2 << 20, fallback: 0, calls: 1 });
  });

  for (const [name, errno] of [['EXDEV', EXDEV], ['ENOSYS', ENOSYS], ['EINVAL', EINVAL], ['EOPNOTSUPP', EOPNOTSUPP]] as const) {
    it(`falls_back_to_pread_pwrite_on_${name}_and_asks_once`, async () => {
      const f = files(`refused-${name}`, data);
      const c = calls(errno);
      const copier = new RangeCopier(c);
      expect(copier.direct(f.src, f.dst)).toBe(true);
      await copier.copy(f.src, 0, f.dst, 0, data.length);
      // One asynchronous try and its synchronous repeat (for the errno), then never again.
      expect(c.made).toBe(2);
      expect(copier.direct(f.src, f.dst)).toBe(false);
      await copier.copy(f.src, 0, f.dst, data.length, 1000);
      expect(c.made).toBe(2);
      f.close();
      const got = fs.readFileSync(f.out);
      expect(got.subarray(0, data.length).equals(data)).toBe(true);
      expect(got.subarray(data.length).equals(data.subarray(0, 1000))).toBe(true);
      expect(copier.stats).toEqual({ kernel: 0, fallback: data.length + 1000, calls: 0 });
    });
  }

  it('another_failure_is_retried_through_a_buffer_and_the_pair_is_asked_again', async () => {
    const f = files('eio', data);
    const c = calls(EIO);
    const copier = new RangeCopier(c);
    await copier.copy(f.src, 0, f.dst, 0, 100_000);
    expect(copier.direct(f.src, f.dst)).toBe(true);
    f.close();
    expect(fs.readFileSync(f.out).equals(data.subarray(0, 100_000))).toBe(true);
    expect(copier.stats.fallback).toBe(100_000);
  });

  it('a_copy_cut_short_finishes_through_a_buffer_with_zeros_past_the_input', async () => {
    const f = files('short', data.subarray(0, 1 << 20));
    const copier = new RangeCopier(calls(undefined, { short: 300_000 }));
    await copier.copy(f.src, 0, f.dst, 0, 2 << 20);
    f.close();
    const got = fs.readFileSync(f.out);
    expect(got.length).toBe(2 << 20);
    expect(got.subarray(0, 1 << 20).equals(data.subarray(0, 1 << 20))).toBe(true);
    expect(got.subarray(1 << 20).equals(Buffer.alloc(1 << 20))).toBe(true);
    expect(copier.stats).toEqual({ kernel: 300_000, fallback: (2 << 20) - 300_000, calls: 1 });
  });

  it('a_file_without_a_descriptor_is_never_given_to_the_kernel', () => {
    const f = files('nofd', data.subarray(0, 10));
    const copier = new RangeCopier();
    const wrapped = { ...f.dst, fd: undefined } as unknown as NodeBlockFile;
    expect(copier.direct(f.src, wrapped)).toBe(false);
    expect(new RangeCopier(null).direct(f.src, f.dst)).toBe(false);
    f.close();
  });

  const shm = fs.existsSync('/dev/shm') ? fs.mkdtempSync('/dev/shm/qcow2-copy-range-') : undefined;
  afterAll(() => { if (shm) fs.rmSync(shm, { recursive: true, force: true }); });
  it.skipIf(shm === undefined)('the_kernels_own_EXDEV_from_tmpfs_to_another_file_system (needs /dev/shm)', async () => {
    const f = files('tmpfs', data, shm);
    // Only where the two are different file systems does the kernel refuse.
    const across = fs.statSync(shm!).dev !== fs.statSync(root).dev;
    const copier = new RangeCopier();
    await copier.copy(f.src, 0, f.dst, 0, data.length);
    expect(copier.direct(f.src, f.dst)).toBe(!across);
    f.close();
    expect(fs.readFileSync(f.out).equals(data)).toBe(true);
    if (across) expect(copier.stats).toEqual({ kernel: 0, fallback: data.length, calls: 0 });
  });
});
