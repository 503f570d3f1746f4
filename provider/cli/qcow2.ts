#!/usr/bin/env node
// The `qcow2` executable (package.json "bin"). It runs the command line bundled into one file,
// qcow2-bundle.js (scripts/bundle-cli.js), with V8's code cache for that file, qcow2-bundle.cache,
// made when the package was built: V8 then neither parses the bundle nor compiles the functions a
// read command runs, which is most of what `qcow2 info` costs beyond Node's own start-up
// (bench/cli-startup.ts). A cache V8 rejects (another Node version, other V8 flags, or none
// there) only costs that time back: the bundle is compiled from its source as usual.
//
// The build rewrites this file's first two lines into a POSIX shell line (scripts/bundle-cli.js):
// run as an executable, `sh` starts Node on this file with the command's V8 flags and without
// NODE_EXTRA_CA_CERTS, which restoreExtraCaCerts puts back before the command runs.

import { readFileSync } from 'fs';
import { createRequire } from 'module';
import { join } from 'path';
import { Script } from 'vm';
import type { Io } from './io';

export const BUNDLE = join(__dirname, 'qcow2-bundle.js');
export const CODE_CACHE = join(__dirname, 'qcow2-bundle.cache');

/**
 * Where the launcher's shell line (scripts/bundle-cli.js) keeps NODE_EXTRA_CA_CERTS while Node
 * starts, so that Node does not load those certificates (with its whole CA store) at start-up
 * for commands that make no TLS connection.
 */
export const DEFERRED_CA_CERTS = 'QCOW2_LAUNCHER_NODE_EXTRA_CA_CERTS';

/** Put NODE_EXTRA_CA_CERTS back as the user set it, for the HTTPS client and child processes. */
export function restoreExtraCaCerts(env: NodeJS.ProcessEnv): void {
  const deferred = env[DEFERRED_CA_CERTS];
  if (deferred === undefined) return;
  delete env[DEFERRED_CA_CERTS];
  env.NODE_EXTRA_CA_CERTS = deferred;
}

interface CommandLine {
  main(argv: string[], io?: Io): Promise<number>;
}

/** The bundle compiled (with `cachedData` when given) and run as a CommonJS module would be. */
export function load(cachedData?: Buffer): { cli: CommandLine; script: Script } {
  // Node's module wrapper, its head in place of the bundle's hashbang line so that positions in
  // the bundle still match its source map.
  const source = readFileSync(BUNDLE, 'utf8').replace(/^#!.*/, '(function (exports, require, module, __filename, __dirname) {');
  const script = new Script(`${source}\n})`, { filename: BUNDLE, ...(cachedData ? { cachedData } : {}) });
  const module = { exports: {} as CommandLine };
  (script.runInThisContext() as (...a: unknown[]) => void)(module.exports, createRequire(BUNDLE), module, BUNDLE, __dirname);
  return { cli: module.exports, script };
}

function codeCache(): Buffer | undefined {
  try {
    return readFileSync(CODE_CACHE);
  } catch {
    return undefined; // not built: compile from source
  }
}

let cli: CommandLine | undefined;

/** main.ts's main(), from the bundle: one command line, output to `io` (default fds 1 and 2); resolves with the exit status. */
export function main(argv: string[], io?: Io): Promise<number> {
  cli ??= load(codeCache()).cli;
  return cli.main(argv, io);
}

/**
 * V8's interrupt budget for this process (bytecode executed between checks whether a function
 * should be optimised): 16 times V8's default of 66 KiB. A command runs for a second or so, and
 * at the default V8's optimising compiler compiled about 60 functions of a 1 GiB import (56 for
 * a raw file, 72 for a compressed image) on its background threads, about as much CPU as the
 * copy's own JavaScript, for functions most of which had run their last by the time their
 * code was ready. With this budget it compiles the 7 to 17 functions that run hot (a loop over
 * an image's tables or clusters reaches three budgets in milliseconds), the rest stay in the
 * interpreter and its baseline code.
 */
export const INTERRUPT_BUDGET = 16 * 67584;

/**
 * V8's flags for a command (INTERRUPT_BUDGET), set before the bundle is compiled: V8 accepts a
 * code cache only under the flags it was made with, so scripts/bundle-cli.js makes it under these.
 */
export function setStartFlags(): void {
  const flag = `--interrupt-budget=${INTERRUPT_BUDGET}`;
  // Given on Node's command line by the launcher's shell line: the same flags, without loading
  // the v8 module (a few milliseconds of every command's start).
  if (process.execArgv.includes(flag)) return;
  (require('v8') as typeof import('v8')).setFlagsFromString(flag);
}

if (require.main === module) {
  restoreExtraCaCerts(process.env);
  setStartFlags();
  void main(process.argv.slice(2)).then((code) => { process.exitCode = code; });
}
