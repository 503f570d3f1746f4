// The hostile cases qemu-iotests run, replayed with the `qcow2` command line and with qemu-img on
// the same bytes: QEMU's result is the expected one (its exit status and words), and where
// qemu-img marks an image corrupt and fails, we fail and leave the image as it was.
// 036 (a feature name from a one-entry table), 060 (corrupt tables under amend and shrink),
// 061 (resize of a v2 image with snapshots), 138 (an L2 entry far past the end of the file),
// 261 (snapshot extra data on upgrade; a snapshot table too big), 271 (a shrink clears the
// subcluster bitmap of the clusters it frees). Also: output into a closed pipe, and map of an
// image with compressed clusters, end without a stack trace.

import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { md5, must, scratchBase, skipWithoutTools } from '../../engines/helpers';
import { CLI, type CliRun, runCli } from '../../helpers/cli';

const SKIP = skipWithoutTools('cli/hostile-iotests');

type Run = CliRun;

/** Our CLI in this process, with qemu-img's prefix on its messages so the words compare. */
async function ours(args: string[], cwd: string): Promise<Run> {
  const r = await runCli(args, cwd);
  return { ...r, stdout: r.stdout.replace(/^qcow2: /gm, 'qemu-img: '), stderr: r.stderr.replace(/^qcow2: /gm, 'qemu-img: ') };
}

function theirs(args: string[], cwd: string): Run {
  const r = spawnSync('qemu-img', args, { cwd, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function poke(file: string, offset: number, bytes: number[] | Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, Buffer.from(bytes), 0, bytes.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

function peek(file: string, offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, b, 0, length, offset);
  } finally {
    fs.closeSync(fd);
  }
  return b;
}

const be64 = (file: string, offset: number) => peek(file, offset, 8).readBigUInt64BE(0);
const be32 = (file: string, offset: number) => peek(file, offset, 4).readUInt32BE(0);

describe.skipIf(SKIP)('hostile cases of qemu-iotests, against qemu-img', () => {
  const dirs: string[] = [];
  afterAll(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });
  /** Two folders built the same way: one for qemu-img, one for us. */
  const pair = (build: (dir: string) => void): [string, string] => {
    const a = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-hiot-q-'));
    const b = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-hiot-o-'));
    dirs.push(a, b);
    build(a);
    for (const f of fs.readdirSync(a)) fs.copyFileSync(path.join(a, f), path.join(b, f));
    return [a, b];
  };

  it('060: amend -o compat=0.10 fails on an unaligned preallocated zero cluster, and our image is left as it was', async () => {
    const [q, o] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', 't.qcow2', '64M'], d);
      must('qemu-io', ['-c', 'write 0 64k', 't.qcow2'], d);
      poke(path.join(d, 't.qcow2'), 0x40000, [0x80, 0, 0, 0, 0, 0x05, 0x2a, 0x01]);
    });
    const before = md5(path.join(o, 't.qcow2'));
    const t = theirs(['amend', '-o', 'compat=0.10', 't.qcow2'], q);
    const u = await ours(['amend', '-o', 'compat=0.10', 't.qcow2'], o);
    expect(t.status).toBe(1);
    expect(t.stderr).toMatch(/Marking image as corrupt: Cluster allocation offset 0x52a00 unaligned/);
    expect(u.status).toBe(1);
    expect(u.stderr).toMatch(/Image is corrupt: check finds .*nothing was changed.*check -r all first/s);
    expect(md5(path.join(o, 't.qcow2'))).toBe(before);
  });

  it('060: resize --shrink fails with a refblock far out of bounds, and the size stays', async () => {
    const [q, o] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', 't.qcow2', '64M'], d);
      poke(path.join(d, 't.qcow2'), 0x10000 + 8, [0x00, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    });
    const before = md5(path.join(o, 't.qcow2'));
    const t = theirs(['resize', '--shrink', 't.qcow2', '32M'], q);
    const u = await ours(['resize', '--shrink', 't.qcow2', '32M'], o);
    expect(t.status).toBe(1);
    expect(u.status).toBe(1);
    const size = (d: string) => (JSON.parse(must('qemu-img', ['info', '--output=json', 't.qcow2'], d).stdout) as { 'virtual-size': number })['virtual-size'];
    expect(size(q)).toBe(64 << 20);
    expect(size(o)).toBe(64 << 20);
    expect(md5(path.join(o, 't.qcow2'))).toBe(before);
  });

  it('061: resize of a compat=0.10 image with internal snapshots is refused in qemu-img\'s words', async () => {
    const [q, o] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 't.qcow2', '64M'], d);
      must('qemu-img', ['snapshot', '-c', 'foo', 't.qcow2'], d);
    });
    const t = theirs(['resize', 't.qcow2', '128M'], q);
    const u = await ours(['resize', 't.qcow2', '128M'], o);
    expect(t).toMatchObject({ status: 1, stderr: "qemu-img: Can't resize a v2 image which has snapshots\n" });
    expect(u).toEqual(t);
  });

  it('036: an unknown incompatible bit is named from a feature table of one short entry', async () => {
    const [q, o] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', 't.qcow2', '64M'], d);
      const f = path.join(d, 't.qcow2');
      poke(f, 72, Buffer.from('8000000000000000', 'hex'));
      // The feature-name table (the first extension, after the 112-byte header) replaced by one 14-byte entry.
      expect(be32(f, 112)).toBe(0x6803f857);
      const ext = Buffer.alloc(8 + 16 + 8);
      ext.writeUInt32BE(0x6803f857, 0);
      ext.writeUInt32BE(14, 4);
      Buffer.from('\x00\x3fTest feature', 'latin1').copy(ext, 8);
      poke(f, 112, Buffer.concat([ext, Buffer.alloc(1024)]));
    });
    const t = theirs(['info', 't.qcow2'], q);
    const u = await ours(['info', 't.qcow2'], o);
    expect(t.stderr).toMatch(/Unsupported qcow2 feature\(s\): Test feature/);
    expect(u).toEqual(t);
  });

  it('138: check reports an L2 entry far past the end of the file as qemu-img does', async () => {
    const [q, o] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 't.qcow2', '512'], d);
      must('qemu-io', ['-c', 'write 0 512', 't.qcow2'], d);
      poke(path.join(d, 't.qcow2'), 2048 + 8, [0x00, 0x80, 0, 0, 0, 0, 0, 0]);
    });
    const t = theirs(['check', 't.qcow2'], q);
    const u = await ours(['check', 't.qcow2'], o);
    expect(t.stdout + t.stderr).toMatch(/counting reference for region exceeding the end of the file/);
    expect(u).toEqual(t);
  });

  it('261: amend -o compat=1.1 rewrites snapshot entries of 0 and 8 bytes of extra data to 24, as qemu-img', async () => {
    const [q, o] = pair((d) => {
      const f = path.join(d, 't.qcow2');
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', 't.qcow2', '64M'], d);
      for (const n of ['sn0', 'sn1']) must('qemu-img', ['snapshot', '-c', n, 't.qcow2'], d);
      // Rewrite the table in place with extra data of 0 and 8 bytes (the first 8: VM state size).
      const table = Number(be64(f, 64));
      const entries: Buffer[] = [];
      let p = table;
      for (const keep of [0, 8]) {
        const fixed = peek(f, p, 40);
        const extra = fixed.readUInt32BE(36);
        const names = fixed.readUInt16BE(12) + fixed.readUInt16BE(14);
        const e = Buffer.concat([fixed, peek(f, p + 40, keep), peek(f, p + 40 + extra, names)]);
        e.writeUInt32BE(keep, 36);
        entries.push(Buffer.concat([e, Buffer.alloc((8 - (e.length % 8)) % 8)]));
        p += 40 + extra + names;
        p = Math.ceil(p / 8) * 8;
      }
      poke(f, table, Buffer.concat([...entries, Buffer.alloc(p - table - entries.reduce((n, e) => n + e.length, 0))]));
      must('qemu-img', ['check', 't.qcow2'], d);
    });
    const t = theirs(['amend', '-o', 'compat=1.1', 't.qcow2'], q);
    const u = await ours(['amend', '-o', 'compat=1.1', 't.qcow2'], o);
    expect(t.status).toBe(0);
    expect(u.status).toBe(0);
    const extras = (d: string) => {
      const f = path.join(d, 't.qcow2');
      const out: number[] = [];
      let p = Number(be64(f, 64));
      for (let i = 0; i < be32(f, 60); i++) {
        const fixed = peek(f, p, 40);
        out.push(fixed.readUInt32BE(36));
        p = Math.ceil((p + 40 + fixed.readUInt32BE(36) + fixed.readUInt16BE(12) + fixed.readUInt16BE(14)) / 8) * 8;
      }
      return out;
    };
    expect(extras(q)).toEqual([24, 24]);
    expect(extras(o)).toEqual([24, 24]);
    expect(must('qemu-img', ['check', 't.qcow2'], o).status).toBe(0);
    const list = (d: string) => must('qemu-img', ['snapshot', '-l', 't.qcow2'], d).stdout;
    expect(list(o)).toBe(list(q));
  });

  it('261: a snapshot table over 64 MiB is refused by info and check as qemu-img refuses it', async () => {
    const [q, o] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', 't.qcow2', '64M'], d);
      const f = path.join(d, 't.qcow2');
      // Entries of 40 + 1024 + 65535 + 65535 bytes (padded to 8), as many as pass 64 MiB.
      const size = 40 + 1024 + 65535 + 65535 + 2;
      const count = Math.ceil((64 << 20) / size) + 1;
      const entry = Buffer.alloc(size);
      entry.writeUInt16BE(0xffff, 12);
      entry.writeUInt16BE(0xffff, 14);
      entry.writeUInt32BE(1024, 36);
      const at = 1 << 20;
      const fd = fs.openSync(f, 'r+');
      try {
        for (let i = 0; i < count; i++) fs.writeSync(fd, entry, 0, size, at + i * size);
      } finally {
        fs.closeSync(fd);
      }
      const h = Buffer.alloc(12);
      h.writeUInt32BE(count, 0);
      h.writeBigUInt64BE(BigInt(at), 4);
      poke(f, 60, h);
    });
    for (const cmd of [['info', 't.qcow2'], ['check', 't.qcow2']]) {
      const t = theirs(cmd, q);
      const u = await ours(cmd, o);
      expect(t.status, cmd.join(' ')).not.toBe(0);
      expect(t.stderr + t.stdout).toMatch(/Snapshot table is too big/);
      expect(u, cmd.join(' ')).toEqual(t);
    }
  });

  it('271: a shrink clears the subcluster bitmap of the clusters it frees', async () => {
    const [q, o] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', 't.qcow2', '1M'], d);
      must('qemu-io', ['-c', 'write -q 0 128k', 't.qcow2'], d);
      must('qemu-io', ['-c', 'discard -q 0 128k', 't.qcow2'], d);
    });
    for (const [d, run] of [[q, theirs], [o, ours]] as const) {
      expect((await run(['resize', '--shrink', 't.qcow2', '64k'], d)).status).toBe(0);
      expect((await run(['resize', 't.qcow2', '1M'], d)).status).toBe(0);
    }
    const entry = (d: string, i: number) => {
      const f = path.join(d, 't.qcow2');
      const l2 = Number(be64(f, Number(be64(f, 40))) & 0x00fffffffffffe00n);
      return peek(f, l2 + 16 * i, 16).toString('hex');
    };
    expect(entry(q, 1)).toBe('0'.repeat(32));
    expect(entry(o, 1)).toBe(entry(q, 1));
    expect(entry(o, 0)).toBe(entry(q, 0));
  });

  it('absurd and wrapped sizes are refused at once in qemu-img\'s words, the image unchanged', async () => {
    const [q, o] = pair((d) => must('qemu-img', ['create', '-q', '-f', 'qcow2', 't.qcow2', '1M'], d));
    const before = md5(path.join(o, 't.qcow2'));
    for (const cmd of [['resize', 't.qcow2', '64P'], ['amend', '-o', 'size=4E', 't.qcow2'], ['resize', 't.qcow2', '8E'], ['resize', 't.qcow2', '+8E'],
      ['resize', 't.qcow2', '16E'], ['resize', 't.qcow2', '0'], ['resize', 't.qcow2', '--', '-64M'], ['resize', 't.qcow2', 'abc']]) {
      expect(await ours(cmd, o), cmd.join(' ')).toEqual(theirs(cmd, q));
    }
    expect(md5(path.join(o, 't.qcow2'))).toBe(before);
  });

  it('a backing loop is reported once, not once per layer', async () => {
    const [, o] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'b.qcow2', '-F', 'qcow2', 'a.qcow2', '1M'], d);
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-u', '-b', 'a.qcow2', '-F', 'qcow2', 'b.qcow2', '1M'], d);
    });
    for (const cmd of [['map', 'a.qcow2'], ['convert', '-O', 'qcow2', 'a.qcow2', 'c.qcow2']]) {
      const u = await ours(cmd, o);
      expect(u.status).toBe(1);
      expect(u.stderr).toBe("qemu-img: Could not open 'a.qcow2': Could not open backing file: the backing chain is deeper than 64 images; " +
        'a backing file that names the image itself or one above it makes a loop (qcow2 info --backing-chain shows it)\n');
    }
    expect(fs.existsSync(path.join(o, 'c.qcow2'))).toBe(false);
  });

  it('output into a closed pipe, and map of compressed clusters, end without a stack trace', () => {
    const [, o] = pair((d) => {
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512', 't.qcow2', '8M'], d);
      // Every other cluster written: a long map.
      const cmds: string[] = [];
      for (let i = 0; i < 4096; i += 2) cmds.push('-c', `write -q ${i * 512} 512`);
      must('qemu-io', [...cmds, 't.qcow2'], d);
      must('qemu-img', ['create', '-q', '-f', 'qcow2', 'c.qcow2', '1M'], d);
      must('qemu-io', ['-c', 'write -c 0 64k', 'c.qcow2'], d);
    });
    const sh = (cmd: string) => spawnSync('sh', ['-c', cmd], { cwd: o, encoding: 'utf8' });
    for (const cmd of [`"${process.execPath}" "${CLI}" map --output=json t.qcow2 | head -1`, `"${process.execPath}" "${CLI}" info t.qcow2 | head -1`]) {
      const r = sh(`${cmd} >/dev/null`);
      expect(r.stderr, cmd).not.toMatch(/\n\s+at |Error:|EPIPE/);
    }
    const map = spawnSync(process.execPath, [CLI, 'map', 'c.qcow2'], { cwd: o, encoding: 'utf8' });
    const qmap = theirs(['map', 'c.qcow2'], o);
    expect(map.stderr.replace(/^qcow2: /gm, 'qemu-img: ')).toBe(qmap.stderr);
    expect(map.status).toBe(qmap.status);
    expect(map.stdout).toBe(qmap.stdout);
  });
});
