#!/usr/bin/env node
// `qcow2`: a qemu-img-compatible command line over the native engine. Syntax, output and exit
// statuses follow qemu-img 7.2; messages are prefixed `qcow2:` where qemu-img prints
// `qemu-img:`. One file per command (commands/), loaded only when that command runs, so that a
// quick `qcow2 info` loads neither commander nor the rest of the format engine. Every failure
// reaches the user through report.ts: a message, never a stack trace.

import { Exit, PROG, messageOf, report } from './report';
import { BROKEN_PIPE_STATUS, BrokenPipe, Io, err, flushOut, out, runEndings, withIo } from './io';

interface CommandModule {
  usage: string;
  description: string;
  run(argv: string[]): Promise<void>;
}

// Each command's module, required when it runs (written out, not computed, so that a bundler
// sees every one).
const LOADERS = {
  create: () => require('./commands/create') as CommandModule,
  info: () => require('./commands/info') as CommandModule,
  check: () => require('./commands/check') as CommandModule,
  amend: () => require('./commands/amend') as CommandModule,
  resize: () => require('./commands/resize') as CommandModule,
  rebase: () => require('./commands/rebase') as CommandModule,
  convert: () => require('./commands/convert') as CommandModule,
  map: () => require('./commands/map') as CommandModule,
  snapshot: () => require('./commands/snapshot') as CommandModule,
  compare: () => require('./commands/compare') as CommandModule,
  commit: () => require('./commands/commit') as CommandModule,
  bitmap: () => require('./commands/bitmap') as CommandModule,
};
type CommandName = keyof typeof LOADERS;
const COMMANDS = Object.keys(LOADERS) as CommandName[];

function load(name: CommandName): CommandModule {
  return LOADERS[name]();
}

/** The package's version, read when asked for (dist/provider/cli -> the package's folder). */
function version(): string {
  const { readFileSync } = require('fs') as typeof import('fs');
  const { join } = require('path') as typeof import('path');
  return (JSON.parse(readFileSync(join(__dirname, '..', '..', '..', 'package.json'), 'utf8')) as { version: string }).version;
}

function help(): string {
  const lines = [`Usage: ${PROG} [options] [command]`, '', 'qemu-img-compatible qcow2 tool (native engine, no QEMU needed)', '', 'Options:',
    '  -V, --version   output the version number', '  -h, --help      display help for command', '', 'Commands:'];
  for (const name of COMMANDS) {
    const m = load(name);
    lines.push(`  ${m.usage}`, `      ${m.description}`);
  }
  lines.push('', 'An image FILE may be ssh://[user@]host[:port]/absolute/path: a file on a remote host, reached over SSH',
    '(the agent or ~/.ssh/id_*; the host key must be in ~/.ssh/known_hosts).');
  return lines.join('\n') + '\n';
}

/** Run one command line; resolves with the exit status. Output goes to `io` (default: fds 1 and 2). */
export async function main(argv: string[], io?: Io): Promise<number> {
  if (io) return withIo(io, () => run(argv));
  const code = await run(argv);
  try {
    flushOut(); // exit(3) flushes stdout after everything
  } catch (e) {
    if (e instanceof BrokenPipe) return BROKEN_PIPE_STATUS;
    throw e;
  }
  return code;
}

async function run(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  try {
    if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
      (name === undefined ? err : out)(help());
      return name === undefined ? 1 : 0;
    }
    if (name === '-V' || name === '--version') {
      out(`${version()}\n`);
      return 0;
    }
    if (!Object.hasOwn(LOADERS, name)) {
      report(`unknown command '${name}'`);
      return 1;
    }
    const cmd = load(name as CommandName);
    if (rest.includes('-h') || rest.includes('--help')) {
      if (['info', 'check', 'map', 'snapshot', 'compare', 'commit'].includes(name)) {
        out(`Usage: ${PROG} ${cmd.usage}\n\n${cmd.description}\n`);
        return 0;
      }
    }
    try {
      await cmd.run(rest);
    } finally {
      await runEndings();
    }
    return 0;
  } catch (e) {
    if (e instanceof Exit) return e.code;
    if (e instanceof BrokenPipe) return BROKEN_PIPE_STATUS;
    // commander's own errors (unknown option, missing argument) are already printed.
    if (e !== null && typeof e === 'object' && (e as { code?: unknown }).code !== undefined && String((e as { code: unknown }).code).startsWith('commander.')) {
      return (e as { exitCode?: number }).exitCode === 0 ? 0 : 1;
    }
    report(messageOf(e));
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
