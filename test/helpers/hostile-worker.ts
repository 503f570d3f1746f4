// Child process of the hostile-corpus test: runs one hostile case per message through every
// command of the `qcow2` command line (in process, as main() with captured output) and through
// the provider's read and adopt, and reports each run's outcome and the process's peak RSS. A
// child, so that a case that hangs or exhausts memory is observed (and the child replaced)
// instead of taking the test process down. Uses the built code (dist/), as the package ships;
// the test transpiles this file and runs it with plain node (ts-node alone would add 130 MiB to
// the RSS being measured), HOSTILE_REPO naming the repository.

import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

const repo = process.env.HOSTILE_REPO ?? path.join(__dirname, '../..');
const dist = (p: string) => path.join(repo, 'dist', p);
type Main = (argv: string[], io: { out(t: string): void; err(t: string): void }) => Promise<number>;
const main: Main = (argv, io) => (require(dist('provider/cli/main.js')) as { main: Main }).main(argv, io);
const impl = () => require(dist('provider/resource/impl.js')) as {
  read(id: string, props: Record<string, unknown>): Promise<unknown>;
  create(inputs: Record<string, unknown>): Promise<unknown>;
};
const isQcow2Error = (e: unknown) => (require(dist('provider/model/errors.js')) as { Qcow2Error: { isInstance(e: unknown): boolean } }).Qcow2Error.isInstance(e);

/** A hostile image (bytes) or a hostile environment built around a valid image. */
export type HostileCase =
  | { kind: 'bytes'; name: string; b64: string }
  | { kind: 'env'; name: EnvName };

export const ENV_CASES = [
  'backing_is_a_fifo', 'data_file_is_a_fifo', 'image_is_a_fifo', 'backing_is_a_directory', 'data_file_is_a_directory',
  'image_is_a_directory', 'backing_is_a_socket', 'data_file_is_dev_zero', 'backing_is_dev_zero', 'backing_loop',
  'backing_names_itself', 'backing_is_a_dangling_symlink', 'data_file_is_a_symlink_to_a_fifo', 'image_is_unreadable',
] as const;
export type EnvName = typeof ENV_CASES[number];

export interface RunResult {
  path: string;
  /** ok: exit status or a typed error; stack: a stack trace or an untyped error reached the user. */
  outcome: 'ok' | 'stack';
  detail: string;
}

export interface HostileRequest { id: number; dir: string; case: HostileCase }
export interface HostileReply { id: number; results: RunResult[]; maxRssKiB: number }

/** A stack trace in text: "    at fn (file:1:2)", "node:internal", or an untyped JavaScript error. */
export const STACK_TRACE = /^\s+at .+(:\d+:\d+\)?|\(native\))$|node:internal|^(Type|Range|Reference|Syntax|Eval|Internal)?Error\b|\b(TypeError|RangeError|ReferenceError|SyntaxError):/m;

function mkfifo(p: string): void {
  execFileSync('mkfifo', [p]);
}

const sockets: net.Server[] = [];

/** Build the case in `dir`: `img.qcow2` is what every command is pointed at. */
async function setUp(dir: string, c: HostileCase): Promise<void> {
  const img = path.join(dir, 'img.qcow2');
  const qcow2 = async (args: string[]) => main(args, { out: () => undefined, err: () => undefined });
  if (c.kind === 'bytes') {
    fs.writeFileSync(img, Buffer.from(c.b64, 'base64'));
    return;
  }
  const prev = process.cwd();
  process.chdir(dir);
  try {
    switch (c.name) {
      case 'backing_is_a_fifo': mkfifo('b'); await qcow2(['create', '-q', '-f', 'qcow2', '-u', '-b', 'b', '-F', 'raw', 'img.qcow2', '1M']); break;
      case 'data_file_is_a_fifo':
        await qcow2(['create', '-q', '-f', 'qcow2', '-o', 'data_file=d', 'img.qcow2', '1M']);
        fs.rmSync('d');
        mkfifo('d');
        break;
      case 'image_is_a_fifo': mkfifo('img.qcow2'); break;
      case 'backing_is_a_directory': fs.mkdirSync('b'); await qcow2(['create', '-q', '-f', 'qcow2', '-u', '-b', 'b', '-F', 'raw', 'img.qcow2', '1M']); break;
      case 'data_file_is_a_directory':
        await qcow2(['create', '-q', '-f', 'qcow2', '-o', 'data_file=d', 'img.qcow2', '1M']);
        fs.rmSync('d');
        fs.mkdirSync('d');
        break;
      case 'image_is_a_directory': fs.mkdirSync('img.qcow2'); break;
      case 'backing_is_a_socket': {
        const s = net.createServer();
        await new Promise<void>((r) => s.listen(path.join(dir, 'b'), r));
        sockets.push(s);
        await qcow2(['create', '-q', '-f', 'qcow2', '-u', '-b', 'b', '-F', 'raw', 'img.qcow2', '1M']);
        break;
      }
      case 'data_file_is_dev_zero':
        await qcow2(['create', '-q', '-f', 'qcow2', '-o', 'data_file=d', 'img.qcow2', '1M']);
        fs.rmSync('d');
        fs.symlinkSync('/dev/zero', 'd');
        break;
      case 'backing_is_dev_zero': await qcow2(['create', '-q', '-f', 'qcow2', '-u', '-b', '/dev/zero', '-F', 'raw', 'img.qcow2', '1M']); break;
      case 'backing_loop':
        await qcow2(['create', '-q', '-f', 'qcow2', '-u', '-b', 'b.qcow2', '-F', 'qcow2', 'img.qcow2', '1M']);
        await qcow2(['create', '-q', '-f', 'qcow2', '-u', '-b', 'img.qcow2', '-F', 'qcow2', 'b.qcow2', '1M']);
        break;
      case 'backing_names_itself': await qcow2(['create', '-q', '-f', 'qcow2', '-u', '-b', 'img.qcow2', '-F', 'qcow2', 'img.qcow2', '1M']).then(async (code) => {
        // create refuses a backing file that is the image itself; write the name in by hand.
        if (code !== 0) {
          await qcow2(['create', '-q', '-f', 'qcow2', 'img.qcow2', '1M']);
          await qcow2(['rebase', '-u', '-b', 'img.qcow2', '-F', 'qcow2', 'img.qcow2']);
        }
      });
        break;
      case 'backing_is_a_dangling_symlink': fs.symlinkSync('nowhere', 'b'); await qcow2(['create', '-q', '-f', 'qcow2', '-u', '-b', 'b', '-F', 'raw', 'img.qcow2', '1M']); break;
      case 'data_file_is_a_symlink_to_a_fifo':
        await qcow2(['create', '-q', '-f', 'qcow2', '-o', 'data_file=d', 'img.qcow2', '1M']);
        fs.rmSync('d');
        mkfifo('f');
        fs.symlinkSync('f', 'd');
        break;
      case 'image_is_unreadable': await qcow2(['create', '-q', '-f', 'qcow2', 'img.qcow2', '1M']); fs.chmodSync('img.qcow2', 0); break;
    }
  } finally {
    process.chdir(prev);
  }
}

/** Every command path, each on its own copy where it writes. */
const PATHS: Array<[name: string, argv: (img: string, work: string) => string[], writes: boolean]> = [
  ['info', (i) => ['info', i], false],
  ['info --output=json --backing-chain', (i) => ['info', '--output=json', '--backing-chain', i], false],
  ['check', (i) => ['check', i], false],
  ['check --output=json', (i) => ['check', '--output=json', i], false],
  ['map', (i) => ['map', i], false],
  ['map --output=json', (i) => ['map', '--output=json', i], false],
  ['amend -o lazy_refcounts=on', (_i, w) => ['amend', '-o', 'lazy_refcounts=on', w], true],
  ['amend -o compat=0.10', (_i, w) => ['amend', '-o', 'compat=0.10', w], true],
  ['resize +1M', (_i, w) => ['resize', w, '+1M'], true],
  ['resize --shrink 64K', (_i, w) => ['resize', '--shrink', w, '64K'], true],
  ['rebase -u -b ""', (_i, w) => ['rebase', '-u', '-b', '', w], true],
  ['rebase -b other', (_i, w) => ['rebase', '-b', 'other.qcow2', '-F', 'qcow2', w], true],
  ['convert -O qcow2', (i) => ['convert', '-O', 'qcow2', i, 'converted.qcow2'], false],
  ['create -b (overlay)', (i) => ['create', '-f', 'qcow2', '-b', i, '-F', 'qcow2', 'overlay.qcow2'], false],
];

function copy(from: string, to: string): boolean {
  try {
    fs.rmSync(to, { force: true, recursive: true });
    if (!fs.statSync(from).isFile()) return false; // a FIFO would block the copy itself
    fs.copyFileSync(from, to);
    return true;
  } catch {
    return false; // not a regular readable file: the command runs on the original instead
  }
}

async function runCli(dir: string, name: string, argv: string[]): Promise<RunResult> {
  let text = '';
  const prev = process.cwd();
  process.chdir(dir);
  try {
    const code = await main(argv, { out: (t) => { text += t.length > 4096 ? t.slice(0, 4096) : t; }, err: (t) => { text += t; } });
    const stack = STACK_TRACE.test(text);
    return { path: name, outcome: stack ? 'stack' : 'ok', detail: `exit ${code}: ${text.slice(0, 600)}` };
  } catch (e) {
    return { path: name, outcome: 'stack', detail: `main threw: ${(e as Error)?.stack ?? String(e)}` };
  } finally {
    process.chdir(prev);
  }
}

async function runProvider(name: string, call: () => Promise<unknown>): Promise<RunResult> {
  try {
    await call();
    return { path: name, outcome: 'ok', detail: 'ok' };
  } catch (e) {
    const typed = isQcow2Error(e) && !STACK_TRACE.test((e as Error).message);
    return { path: name, outcome: typed ? 'ok' : 'stack', detail: typed ? (e as Error).message.slice(0, 600) : ((e as Error)?.stack ?? String(e)) };
  }
}

async function run(dir: string, c: HostileCase): Promise<RunResult[]> {
  await setUp(dir, c);
  const img = path.join(dir, 'img.qcow2');
  const work = path.join(dir, 'work.qcow2');
  const results: RunResult[] = [];
  await main(['create', '-q', '-f', 'qcow2', path.join(dir, 'other.qcow2'), '1M'], { out: () => undefined, err: () => undefined });
  for (const [name, argv, writes] of PATHS) {
    const target = writes && copy(img, work) ? work : img;
    if (!writes) for (const f of ['converted.qcow2', 'overlay.qcow2']) fs.rmSync(path.join(dir, f), { force: true });
    results.push(await runCli(dir, name, argv(img, target)));
  }
  results.push(await runProvider('provider read', () => impl().read(img, { path: img, engine: 'native' })));
  const adoptee = copy(img, work) ? work : img;
  results.push(await runProvider('provider adopt', () => impl().create({ path: adoptee, adopt: true, engine: 'native' })));
  return results;
}

// Only when forked as the worker: the test imports this module for its types and constants.
if (require.main === module) {
  process.on('message', (m: HostileRequest) => {
    void run(m.dir, m.case).then((results) => {
      process.send!({ id: m.id, results, maxRssKiB: process.resourceUsage().maxRSS } satisfies HostileReply);
    });
  });
  process.on('disconnect', () => process.exit(0));
  process.send!({ ready: true });
}
