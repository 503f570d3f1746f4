// check against qemu-img check: clean images of many shapes, and leaked or corrupted fixtures
// made by editing bytes of real images. Verdicts (exit codes), JSON and every message line must
// be qemu-img's.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkImageFile } from '../../../provider/qcow2/ops/check';
import { checkExitCode, checkHumanText, checkJson } from '../../../provider/cli/render/check';
import { qemuImgAvailable, requireQemu } from '../../helpers/qemu';

const HAVE = qemuImgAvailable() && spawnSync('qemu-io', ['--version']).status === 0;
const SKIP = !HAVE && !requireQemu;
if (SKIP) console.warn('check.test: qemu-img/qemu-io not installed; the check comparisons are skipped');

let root: string;
beforeAll(() => { if (!SKIP) root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-check-')); });
afterAll(() => { if (root) fs.rmSync(root, { recursive: true, force: true }); });

const sh = (cmd: string, cwd: string) => {
  const r = spawnSync('bash', ['-c', cmd], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd}\n${r.stderr}`);
};

/** Little helpers to patch big-endian values in place. */
function patch(file: string, edits: Array<[offset: number, bytes: number[] | Buffer]>): void {
  const fd = fs.openSync(file, 'r+');
  try {
    for (const [off, bytes] of edits) fs.writeSync(fd, Buffer.from(bytes), 0, bytes.length, off);
  } finally {
    fs.closeSync(fd);
  }
}
const be16 = (v: number) => [v >> 8, v & 0xff];
const be64 = (v: bigint) => { const b = Buffer.alloc(8); b.writeBigUInt64BE(v); return b; };
const readU64 = (file: string, off: number) => { const b = Buffer.alloc(8); const fd = fs.openSync(file, 'r'); fs.readSync(fd, b, 0, 8, off); fs.closeSync(fd); return b.readBigUInt64BE(); };

interface Fixture {
  name: string;
  /** bash in an empty folder; must leave img.qcow2 (and whatever it needs). */
  make: string;
  /** Byte edits after `make` (offsets of a 64 KiB-cluster image unless the fixture says). */
  edit?: (file: string) => void;
  /** The exit code both must give. */
  exit: 0 | 1 | 2 | 3;
}

// 64 KiB clusters, 1 GiB plain image: header 0, reftable 0x10000, refblock 0x20000, L1 0x30000.
const RB = 0x20000;
const L1 = 0x30000;
const DATA = "qemu-io -f qcow2 -c 'write -P 0x11 0 128k' -c 'write -P 0x22 600M 64k' -c 'write -z 2M 64k' img.qcow2 >/dev/null";

const fixtures: Fixture[] = [
  // --- clean images of many shapes
  { name: 'clean: fresh 1G', make: 'qemu-img create -q -f qcow2 img.qcow2 1G', exit: 0 },
  { name: 'clean: data written by qemu-io', make: `qemu-img create -q -f qcow2 img.qcow2 1G && ${DATA}`, exit: 0 },
  { name: 'clean: data-file-raw 1G', make: 'qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on img.qcow2 1G', exit: 0 },
  { name: 'clean: data-file-raw with writes', make: "qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on img.qcow2 256M && qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -z 8M 1M' -c 'discard 16M 64k' img.qcow2 >/dev/null", exit: 0 },
  { name: 'clean: metadata preallocation', make: 'qemu-img create -q -f qcow2 -o preallocation=metadata img.qcow2 64M', exit: 0 },
  { name: 'clean: compat 0.10 with data', make: `qemu-img create -q -f qcow2 -o compat=0.10 img.qcow2 1G && qemu-io -f qcow2 -c 'write -P 3 0 64k' img.qcow2 >/dev/null`, exit: 0 },
  { name: 'clean: 1-bit refcounts, 512 B clusters, data', make: `qemu-img create -q -f qcow2 -o refcount_bits=1,cluster_size=512 img.qcow2 4M && qemu-io -f qcow2 -c 'write -P 4 0 256k' img.qcow2 >/dev/null`, exit: 0 },
  { name: 'clean: 64-bit refcounts', make: `qemu-img create -q -f qcow2 -o refcount_bits=64 img.qcow2 64M && qemu-io -f qcow2 -c 'write -P 5 0 1M' img.qcow2 >/dev/null`, exit: 0 },
  { name: 'clean: internal snapshot (shared clusters, refcount 2)', make: `qemu-img create -q -f qcow2 img.qcow2 64M && qemu-io -f qcow2 -c 'write -P 6 0 1M' img.qcow2 >/dev/null && qemu-img snapshot -c s1 img.qcow2 && qemu-io -f qcow2 -c 'write -P 7 0 64k' img.qcow2 >/dev/null`, exit: 0 },
  { name: 'clean: persistent bitmaps', make: 'qemu-img create -q -f qcow2 img.qcow2 64M && qemu-img bitmap --add img.qcow2 b0 && qemu-img bitmap --add -g 128K img.qcow2 b1', exit: 0 },
  { name: 'clean: compressed clusters', make: "python3 -c \"import sys; sys.stdout.buffer.write(b''.join(b'line %08d xyz\\n' % i for i in range(200000)))\" > src.raw && qemu-img convert -q -c -O qcow2 src.raw img.qcow2", exit: 0 },
  { name: 'clean: extended L2 with subcluster writes', make: "qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 64M && qemu-io -f qcow2 -c 'write -P 8 4k 4k' -c 'write -z 128k 8k' img.qcow2 >/dev/null", exit: 0 },
  { name: 'clean: overlay with zero clusters', make: "qemu-img create -q -f qcow2 base.qcow2 64M && qemu-io -f qcow2 -c 'write -P 9 0 1M' base.qcow2 >/dev/null && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 img.qcow2 && qemu-io -f qcow2 -c 'write -z 0 64k' -c 'write -P 10 64k 64k' img.qcow2 >/dev/null", exit: 0 },

  {
    // Runs of contiguous clusters mixing COPIED ones (rewritten after the snapshot) with shared
    // ones, across L2 tables (4 KiB clusters: a table covers 2 MiB), fragmented.
    name: 'clean: snapshot, then rewrites interleaved (runs mixing COPIED and shared clusters)',
    make: "qemu-img create -q -f qcow2 -o cluster_size=4096 img.qcow2 16M && qemu-io -f qcow2 -c 'write -P 1 1900k 400k' -c 'write -P 2 8M 64k' -c 'write -P 3 0 16k' img.qcow2 >/dev/null && " +
      "qemu-img snapshot -c s img.qcow2 && qemu-io -f qcow2 -c 'write -P 4 1908k 4k' -c 'write -P 5 2100k 8k' -c 'write -P 6 4k 4k' img.qcow2 >/dev/null",
    exit: 0,
  },

  // --- leaks
  { name: 'leak: the L1 cluster counted twice', make: 'qemu-img create -q -f qcow2 img.qcow2 1G', edit: (f) => patch(f, [[RB + 2 * 3, be16(2)]]), exit: 3 },
  {
    name: 'leak: a counted cluster nothing references',
    make: 'qemu-img create -q -f qcow2 img.qcow2 1G && truncate -s 327680 img.qcow2',
    edit: (f) => patch(f, [[RB + 2 * 4, be16(1)]]), exit: 3,
  },
  {
    // bench/maintenance's image, small: a snapshot the header forgot (nb_snapshots 0), so every
    // data cluster and L2 table is leaked and no COPIED flag is set; runs across L2 tables.
    name: 'leak: a snapshot the header forgot (no COPIED flags, runs across L2 tables)',
    make: "qemu-img create -q -f qcow2 -o cluster_size=4096 img.qcow2 16M && qemu-io -f qcow2 -c 'write -P 1 1900k 400k' -c 'write -P 2 8M 64k' -c 'write -P 3 0 16k' img.qcow2 >/dev/null && " +
      "qemu-img snapshot -c s img.qcow2 && printf '\\0\\0\\0\\0' | dd of=img.qcow2 bs=1 seek=60 conv=notrunc status=none",
    exit: 3,
  },
  // A leak, and (refcount 3 is not 1) a COPIED flag that no longer matches: 2 wins.
  { name: 'leak: data cluster counted 3 times', make: `qemu-img create -q -f qcow2 img.qcow2 1G && ${DATA}`, edit: (f) => patch(f, [[RB + 2 * 5, be16(3)]]), exit: 2 },

  // --- corruptions
  { name: 'corrupt: an L2 table with refcount 0 (data-file-raw)', make: 'qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=on img.qcow2 1G', edit: (f) => patch(f, [[RB + 2 * 4, be16(0)]]), exit: 2 },
  { name: 'corrupt: a data cluster with refcount 0', make: `qemu-img create -q -f qcow2 img.qcow2 1G && ${DATA}`, edit: (f) => patch(f, [[RB + 2 * 5, be16(0)]]), exit: 2 },
  {
    name: 'corrupt: L1 entry without COPIED',
    make: `qemu-img create -q -f qcow2 img.qcow2 1G && ${DATA}`,
    edit: (f) => patch(f, [[L1, be64(readU64(f, L1) & ~(1n << 63n))]]), exit: 2,
  },
  {
    name: 'corrupt: L1 entry with reserved bits',
    make: `qemu-img create -q -f qcow2 img.qcow2 1G && ${DATA}`,
    edit: (f) => patch(f, [[L1, be64(readU64(f, L1) | 0x100n)]]), exit: 2,
  },
  {
    name: 'corrupt: two L2 entries point at one data cluster',
    make: `qemu-img create -q -f qcow2 img.qcow2 1G && ${DATA}`,
    edit: (f) => {
      const l2 = Number(readU64(f, L1) & 0x00fffffffffffe00n);
      patch(f, [[l2 + 8, be64(readU64(f, l2))]]);
    },
    exit: 2,
  },
  {
    name: 'corrupt: a misaligned data offset',
    make: `qemu-img create -q -f qcow2 img.qcow2 1G && ${DATA}`,
    edit: (f) => {
      const l2 = Number(readU64(f, L1) & 0x00fffffffffffe00n);
      patch(f, [[l2, be64(readU64(f, l2) + 0x200n)]]);
    },
    exit: 2,
  },
  {
    name: 'corrupt: L2 entry with reserved bits',
    make: `qemu-img create -q -f qcow2 img.qcow2 1G && ${DATA}`,
    edit: (f) => {
      const l2 = Number(readU64(f, L1) & 0x00fffffffffffe00n);
      patch(f, [[l2, be64(readU64(f, l2) | 0x2n)]]);
    },
    exit: 2,
  },
  // Every refcount lookup then fails: check errors, exit 1 ("could not check").
  { name: 'corrupt: refcount table entry misaligned', make: 'qemu-img create -q -f qcow2 img.qcow2 1G', edit: (f) => patch(f, [[0x10000, be64(0x20000n + 0x200n)]]), exit: 1 },
  { name: 'corrupt: refcount block outside the image', make: 'qemu-img create -q -f qcow2 img.qcow2 1G', edit: (f) => patch(f, [[0x10008, be64(0x7fff0000n)]]), exit: 2 },
  {
    name: 'corrupt: 1-bit refcount overflow (a cluster referenced twice)',
    make: `qemu-img create -q -f qcow2 -o refcount_bits=1,cluster_size=512 img.qcow2 4M && qemu-io -f qcow2 -c 'write -P 4 0 4k' img.qcow2 >/dev/null`,
    edit: (f) => {
      const l1 = Number(readU64(f, 40));
      const l2 = Number(readU64(f, l1) & 0x00fffffffffffe00n);
      patch(f, [[l2 + 8, be64(readU64(f, l2))]]);
    },
    exit: 2,
  },
  {
    name: 'corrupt: compressed entry with COPIED set',
    make: "python3 -c \"import sys; sys.stdout.buffer.write(b''.join(b'line %08d xyz\\n' % i for i in range(20000)))\" > src.raw && qemu-img convert -q -c -O qcow2 src.raw img.qcow2",
    edit: (f) => {
      const l1 = Number(readU64(f, 40));
      const l2 = Number(readU64(f, l1) & 0x00fffffffffffe00n);
      patch(f, [[l2, be64(readU64(f, l2) | (1n << 63n))]]);
    },
    exit: 2,
  },
];

function qemuCheck(dir: string): { status: number; json: Record<string, unknown>; human: string; stderr: string[] } {
  const j = spawnSync('qemu-img', ['check', '--output=json', 'img.qcow2'], { cwd: dir, encoding: 'utf8' });
  const h = spawnSync('qemu-img', ['check', 'img.qcow2'], { cwd: dir, encoding: 'utf8' });
  // `Check failed` is the command line's closing word (ours prints it too), not a check message.
  const stderr = h.stderr.split('\n').filter((l) => l && l !== 'qemu-img: Check failed');
  return { status: j.status ?? -1, json: JSON.parse(j.stdout) as Record<string, unknown>, human: h.stdout, stderr };
}

describe.skipIf(SKIP)('check matches qemu-img check', () => {
  it.each(fixtures.map((f) => [f.name, f] as const))('%s', (_name, fx) => {
    const dir = fs.mkdtempSync(path.join(root, 'fx-'));
    sh(fx.make, dir);
    fx.edit?.(path.join(dir, 'img.qcow2'));
    const theirs = qemuCheck(dir);
    const cwd = process.cwd();
    process.chdir(dir); // data file names are relative to the working directory, as for qemu-img
    let ours;
    try {
      ours = checkImageFile('img.qcow2');
    } finally {
      process.chdir(cwd);
    }
    expect(theirs.status, `qemu-img check exit for the fixture itself\n${theirs.stderr.join('\n')}`).toBe(fx.exit);
    expect(checkExitCode(ours)).toBe(theirs.status);
    expect(checkJson(ours, 'img.qcow2')).toEqual(theirs.json);
    expect(checkHumanText(ours)).toBe(theirs.human);
    expect([...ours.messages].sort()).toEqual([...theirs.stderr].sort());
  });
});
