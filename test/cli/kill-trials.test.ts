// kill -9 during the operations that write: create with a data file (data-file-raw, metadata
// preallocated), create with full preallocation, convert, resize of a data-file-raw image, amend
// and a safe rebase, each run by the `qcow2` command line in a child process killed part way.
// After every kill:
// - nothing is corrupt: an image at the user's path passes qemu-img check (for an in-place
//   change, leaked clusters only are allowed and counted: a kill between new clusters'
//   refcounts and the tables that use them leaves them, as qemu-img's own order does), and
//   shows the guest data it held before or the result (qemu-img compare against a reference);
// - nothing stands at a user's path without its image (a data file alone, a half-written image);
// - the next run of the same command in that folder succeeds, and afterwards no temporary file
//   of ours is left there.
// The kill points are spread evenly over the operation's measured length (the trial count is
// fixed; the length is measured once per operation, so the kills land from start to end).

import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, runCli } from '../helpers/cli';
import { requireQemu, qemuImgAvailable, runQemuImg, skipWithoutQemu } from '../helpers/qemu';

const SKIP = skipWithoutQemu('cli/kill-trials');
const TRIALS = Number(process.env.KILL_TRIALS ?? 34);
/** Ours: `.TARGET.qcow2-tmp-PID-STAMP-ROLE` (provider/qcow2/io/publish.ts). */
const TEMP = /^\..*\.qcow2-tmp-/;

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-kill-'));
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** A prepared folder, the command to kill in it, and what must hold afterwards. */
interface Operation {
  name: string;
  prepare(dir: string): void;
  argv: string[];
  /** Checks after a kill (or after completion); returns what is wrong, '' when all holds. */
  verify(dir: string, completed: boolean): string;
  /** Files the user named: none of them may exist without the image. */
  userFiles: string[];
  image: string;
}

const qemu = (args: string[], dir: string) => runQemuImg(args, { cwd: dir });
const must = (args: string[], dir: string) => {
  const r = qemu(args, dir);
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')}: ${r.stderr}`);
  return r;
};
const qemuIo = (args: string[], dir: string) => {
  const r = spawnSync('qemu-io', args, { cwd: dir, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`qemu-io ${args.join(' ')}: ${r.stderr}`);
};

/** Checks that found leaked clusters only (exit 3), where an in-place change allows them. */
let leakyChecks = 0;

/**
 * qemu-img check: exit 0, or for an in-place change (`leaksAllowed`) 3 too: leaked clusters
 * only, which a kill between new clusters' refcounts and the tables that use them leaves, as
 * qemu-img's own order does (README: every in-place change; the fault-injection tests allow
 * them likewise). Counted in the figures.
 */
function consistent(dir: string, image: string, leaksAllowed = false): string {
  const r = qemu(['check', image], dir);
  if (r.status === 3 && leaksAllowed) leakyChecks++;
  return r.status === 0 || (r.status === 3 && leaksAllowed) ? '' : `check: ${r.stdout}${r.stderr}`.slice(0, 400);
}

function virtualSize(dir: string, image: string): number {
  return (JSON.parse(must(['info', '--output=json', '-U', image], dir).stdout) as { 'virtual-size': number })['virtual-size'];
}

function sameGuestView(dir: string, a: string, b: string): string {
  const r = qemu(['compare', '-U', a, b], dir);
  return r.status === 0 ? '' : `compare ${a} ${b}: ${r.stdout}${r.stderr}`.slice(0, 400);
}

const OPERATIONS: Operation[] = [
  {
    name: 'create with a data file (data-file-raw, 16 GiB, metadata preallocated)',
    prepare: () => undefined,
    argv: ['create', '-q', '-f', 'qcow2', '-o', 'data_file=disk.raw,data_file_raw=on,preallocation=metadata', 'img.qcow2', '16G'],
    userFiles: ['disk.raw'],
    image: 'img.qcow2',
    verify: (dir) => consistent(dir, 'img.qcow2') || (virtualSize(dir, 'img.qcow2') === 16 * 2 ** 30 ? '' : 'wrong size'),
  },
  {
    name: 'create with full preallocation (24 MiB)',
    prepare: () => undefined,
    argv: ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=full', 'img.qcow2', '24M'],
    userFiles: [],
    image: 'img.qcow2',
    verify: (dir) => consistent(dir, 'img.qcow2') || (fs.statSync(path.join(dir, 'img.qcow2')).size >= 24 << 20 ? '' : 'image shorter than its preallocation'),
  },
  {
    name: 'convert (8 MiB of data)',
    prepare: (dir) => {
      must(['create', '-q', '-f', 'qcow2', 'src.qcow2', '64M'], dir);
      qemuIo(['-c', 'write -P 0x5a 0 4M', '-c', 'write -P 0xa5 32M 4M', 'src.qcow2'], dir);
    },
    argv: ['convert', '-O', 'qcow2', 'src.qcow2', 'img.qcow2'],
    userFiles: [],
    image: 'img.qcow2',
    verify: (dir) => consistent(dir, 'img.qcow2') || sameGuestView(dir, 'src.qcow2', 'img.qcow2'),
  },
  {
    name: 'resize of a data-file-raw image (1 GiB to 17 GiB)',
    prepare: (dir) => {
      must(['create', '-q', '-f', 'qcow2', '-o', 'data_file=disk.raw,data_file_raw=on,preallocation=metadata', 'img.qcow2', '1G'], dir);
      qemuIo(['-c', 'write -P 0x33 0 1M', 'img.qcow2'], dir);
      fs.writeFileSync(path.join(dir, 'ref.raw'), firstMiB(path.join(dir, 'disk.raw')));
    },
    argv: ['resize', 'img.qcow2', '17G'],
    userFiles: ['disk.raw'],
    image: 'img.qcow2',
    verify: (dir, completed) => {
      const bad = consistent(dir, 'img.qcow2', true);
      if (bad) return bad;
      const size = virtualSize(dir, 'img.qcow2');
      if (size !== 2 ** 30 && size !== 17 * 2 ** 30) return `virtual size ${size}: neither the old nor the new`;
      if (completed && size !== 17 * 2 ** 30) return 'completed, but not resized';
      // The guest data written before is what it was.
      return firstBytesSame(dir) ? '' : 'data file content changed';
    },
  },
  {
    name: 'amend (refcount_bits=64 on 4 KiB clusters, 8 MiB of data)',
    prepare: (dir) => {
      must(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', 'img.qcow2', '64M'], dir);
      qemuIo(['-c', 'write -P 0x11 0 4M', '-c', 'write -P 0x22 40M 4M', 'img.qcow2'], dir);
      fs.copyFileSync(path.join(dir, 'img.qcow2'), path.join(dir, 'ref.qcow2'));
    },
    argv: ['amend', '-o', 'refcount_bits=64', 'img.qcow2'],
    userFiles: [],
    image: 'img.qcow2',
    verify: (dir) => consistent(dir, 'img.qcow2', true) || sameGuestView(dir, 'ref.qcow2', 'img.qcow2'),
  },
  {
    name: 'rebase (safe, 4 MiB differing)',
    prepare: (dir) => {
      must(['create', '-q', '-f', 'qcow2', 'old.qcow2', '64M'], dir);
      qemuIo(['-c', 'write -P 0x44 0 4M', 'old.qcow2'], dir);
      must(['create', '-q', '-f', 'qcow2', 'new.qcow2', '64M'], dir);
      must(['create', '-q', '-f', 'qcow2', '-b', 'old.qcow2', '-F', 'qcow2', 'img.qcow2'], dir);
      qemuIo(['-c', 'write -P 0x55 48M 1M', 'img.qcow2'], dir);
      must(['convert', '-O', 'qcow2', 'img.qcow2', 'ref.qcow2'], dir);
    },
    argv: ['rebase', '-b', 'new.qcow2', '-F', 'qcow2', 'img.qcow2'],
    userFiles: [],
    image: 'img.qcow2',
    verify: (dir) => consistent(dir, 'img.qcow2', true) || sameGuestView(dir, 'ref.qcow2', 'img.qcow2'),
  },
];

function firstMiB(file: string): Buffer {
  const b = Buffer.alloc(1 << 20);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, b, 0, b.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  return b;
}

function firstBytesSame(dir: string): boolean {
  return firstMiB(path.join(dir, 'disk.raw')).equals(fs.readFileSync(path.join(dir, 'ref.raw')));
}

/**
 * Run the command line in a child; kill it `afterMs` after the command started running (the
 * child says so once Node and the CLI are loaded), or let it finish when afterMs is undefined.
 * Resolves with whether it completed and how long the command ran.
 */
function runChild(dir: string, argv: string[], afterMs?: number): Promise<{ completed: boolean; ms: number; stderr: string }> {
  const launcher = `const m = require(${JSON.stringify(CLI)}); process.stdout.write('go\\n'); ` +
    `const t = process.hrtime.bigint(); m.main(${JSON.stringify(argv)}).then((c) => { process.stdout.write('ms ' + Number(process.hrtime.bigint() - t) / 1e6 + '\\n'); process.exitCode = c; });`;
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['-e', launcher], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', stderr = '';
    let timer: NodeJS.Timeout | undefined;
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (afterMs !== undefined && timer === undefined && out.includes('go\n')) timer = setTimeout(() => child.kill('SIGKILL'), afterMs);
    });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('exit', (code, signal) => {
      if (timer) clearTimeout(timer);
      const ms = Number(/ms ([\d.]+)/.exec(out)?.[1] ?? NaN);
      resolve({ completed: signal === null && code === 0, ms, stderr });
    });
  });
}

/** The next run, in this process (no Node start-up to pay). */
async function runHere(dir: string, argv: string[]): Promise<{ completed: boolean; stderr: string }> {
  const r = await runCli(argv, dir);
  return { completed: r.status === 0, stderr: r.stderr };
}

function leftovers(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => TEMP.test(n));
}

describe.skipIf(SKIP)('kill -9 trials', () => {
  it('the_real_qemu_tools_are_here', () => {
    expect(qemuImgAvailable() || !requireQemu).toBe(true);
  });

  const figures: string[] = [];
  afterAll(() => { if (figures.length) console.log(`[kill-trials]\n${figures.join('\n')}`); });

  describe.each(OPERATIONS)('$name', (op) => {
    it(`${TRIALS}_kills_leave_no_corruption_no_orphan_and_no_temporary_file_after_the_next_run`, async () => {
      // The operation's length, measured once by running it to the end.
      const probe = path.join(scratch, `${op.name.split(' ')[0]}-${OPERATIONS.indexOf(op)}-probe`);
      fs.mkdirSync(probe);
      op.prepare(probe);
      const full = await runChild(probe, op.argv);
      expect(full.completed, full.stderr).toBe(true);
      expect(op.verify(probe, true)).toBe('');
      // Twice, the shorter counting: on a busy machine one run can take far longer than the rest.
      fs.rmSync(probe, { recursive: true, force: true });
      fs.mkdirSync(probe);
      op.prepare(probe);
      const length = Math.min(full.ms, (await runChild(probe, op.argv)).ms);

      const problems: string[] = [];
      let interrupted = 0, corruptions = 0, orphans = 0, temps = 0;
      const leakyBefore = leakyChecks;
      for (let i = 0; i < TRIALS; i++) {
        const dir = path.join(scratch, `${OPERATIONS.indexOf(op)}-${i}`);
        fs.mkdirSync(dir);
        op.prepare(dir);
        const at = (length * (i + 0.5)) / TRIALS;
        const r = await runChild(dir, op.argv, at);
        if (!r.completed) interrupted++;
        const image = fs.existsSync(path.join(dir, op.image));
        for (const f of op.userFiles) {
          if (fs.existsSync(path.join(dir, f)) && !image) {
            orphans++;
            problems.push(`kill at ${at.toFixed(0)} ms: ${f} exists without ${op.image}`);
          }
        }
        if (image && op.argv[0] !== 'create' && op.argv[0] !== 'convert') {
          // In place: the image is always there, and must be whole.
          const bad = op.verify(dir, r.completed);
          if (bad) { corruptions++; problems.push(`kill at ${at.toFixed(0)} ms: ${bad}`); }
        } else if (image) {
          const bad = op.verify(dir, r.completed);
          if (bad) { corruptions++; problems.push(`kill at ${at.toFixed(0)} ms: ${op.image} published incomplete: ${bad}`); }
        }
        // The next run: a new image where none was published, the same command again otherwise.
        if (!image || op.argv[0] === 'resize' || op.argv[0] === 'amend' || op.argv[0] === 'rebase') {
          const again = await runHere(dir, op.argv);
          if (!again.completed) problems.push(`kill at ${at.toFixed(0)} ms: the next run failed: ${again.stderr.trim()}`);
          else {
            const bad = op.verify(dir, true);
            if (bad) { corruptions++; problems.push(`kill at ${at.toFixed(0)} ms: after the next run: ${bad}`); }
          }
        } else {
          // Published: the next operation in the folder sweeps what the killed one left.
          await runHere(dir, ['create', '-q', '-f', 'qcow2', 'next.qcow2', '1M']);
        }
        const left = leftovers(dir);
        if (left.length) { temps++; problems.push(`kill at ${at.toFixed(0)} ms: temporary files left after the next run: ${left.join(', ')}`); }
        fs.rmSync(dir, { recursive: true, force: true });
      }
      fs.rmSync(probe, { recursive: true, force: true });
      figures.push(`  ${op.name}: ${TRIALS} trials over ${length.toFixed(0)} ms, ${interrupted} interrupted, ${corruptions} corruptions, ${leakyChecks - leakyBefore} checks with leaked clusters only, ${orphans} orphans, ${temps} with temporary files left`);
      expect(problems.slice(0, 10).join('\n')).toBe('');
      // The kills must land inside the operation, not only after it.
      expect(interrupted).toBeGreaterThanOrEqual(TRIALS / 3);
    }, 900_000);
  });
});
