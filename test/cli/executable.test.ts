// The `qcow2` executable as installed (package.json "bin"): a launcher that runs one bundled file,
// built by scripts/bundle-cli.js from the compiled command line, with V8's code cache made at
// build time. A short command loads no other module of this package, and no dependency (module
// loading and compiling are most of a short command's cost: bench/cli-startup.ts measures it).

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgAvailable, requireQemu } from '../helpers/qemu';

const ROOT = path.resolve(__dirname, '../..');
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string; bin: Record<string, string> };
const BIN = path.join(ROOT, PKG.bin.qcow2!);
const haveQemu = qemuImgAvailable();
if (!haveQemu && !requireQemu) console.warn('executable: qemu-img not installed; the codec-thread comparison is skipped');

/** The environment with this Node first on PATH: the launcher's shell line starts `node` from PATH. */
function launcherEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}`, ...extra };
}

/**
 * Run the executable (its output to a pipe, or to `stdout`, an open file) with a preload that
 * writes, at exit, the modules require() loaded and the Node built-ins loaded after the preload,
 * to fd 3.
 */
function run(args: string[], cwd: string, stdout: 'pipe' | number = 'pipe'): { status: number | null; stdout: string; stderr: string; modules: string[]; builtins: string[] } {
  const preload = path.join(cwd, 'modules.js');
  fs.writeFileSync(preload, [
    'const before = new Set(process.moduleLoadList);',
    "process.on('exit', () => require('fs').writeSync(3, JSON.stringify({ modules: Object.keys(require.cache),",
    "  builtins: process.moduleLoadList.filter((m) => !before.has(m) && m.startsWith('NativeModule ')).map((m) => m.slice(13)) })));",
  ].join('\n'));
  // Through the launcher's shell line, as a user runs it (it starts Node with the V8 flags the
  // code cache was made under, which spares loading the v8 module).
  const env = launcherEnv({ NODE_OPTIONS: `--require ${preload}` });
  const r = spawnSync(BIN, args, { cwd, env, encoding: 'utf8', stdio: ['ignore', stdout, 'pipe', 'pipe'] });
  const seen = JSON.parse(String(r.output[3])) as { modules: string[]; builtins: string[] };
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, modules: seen.modules.filter((m) => m !== preload), builtins: seen.builtins };
}

/** Node built-ins a short command should not pay for (each brings the stream machinery, or is large). */
const HEAVY_BUILTINS = ['child_process', 'net', 'tty', 'crypto', 'zlib', 'stream', 'fs/promises', 'worker_threads'];

describe('the qcow2 executable', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-bin-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('is_the_bundle_built_from_the_command_line', () => {
    expect(path.relative(ROOT, BIN)).toBe(path.join('dist', 'provider', 'cli', 'qcow2.js'));
    const text = fs.readFileSync(BIN, 'utf8');
    expect(text.startsWith(`#!/bin/sh\n':' /*; `)).toBe(true);
    expect(fs.statSync(BIN).mode & 0o111).not.toBe(0);
  });

  // Node 20 loads NODE_EXTRA_CA_CERTS (and its whole bundled CA store with it) while it starts,
  // whatever the command: a file it cannot read shows as a warning then. The launcher's shell
  // line starts Node without it, and the launcher puts it back for the HTTPS client
  // (cli/commands/convert-url.test.ts trusts its test CA that way).
  it('starts_node_without_loading_NODE_EXTRA_CA_CERTS_and_gives_it_back_to_the_command', () => {
    const env = launcherEnv({ NODE_EXTRA_CA_CERTS: path.join(dir, 'missing-ca.pem') });
    const direct = spawnSync(process.execPath, [BIN, '--version'], { cwd: dir, env, encoding: 'utf8' });
    expect(direct.status).toBe(0);
    expect(direct.stderr).toContain('Ignoring extra certs'); // Node itself read it at start-up
    const launched = spawnSync(BIN, ['--version'], { cwd: dir, env, encoding: 'utf8' });
    expect(launched.status, launched.stderr).toBe(0);
    expect(launched.stdout.trim()).toBe(PKG.version);
    expect(launched.stderr).toBe('');
    const seen = path.join(dir, 'seen-env.js');
    fs.writeFileSync(seen, "process.on('exit', () => require('fs').writeSync(3, JSON.stringify(process.env)));\n");
    const r = spawnSync(BIN, ['--version'], { cwd: dir, env: { ...env, NODE_OPTIONS: `--require ${seen}` }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    expect(r.status, r.stderr).toBe(0);
    const after = JSON.parse(String(r.output[3])) as Record<string, string>;
    expect(after.NODE_EXTRA_CA_CERTS).toBe(env.NODE_EXTRA_CA_CERTS);
    expect(Object.keys(after).filter((k) => k.startsWith('QCOW2_LAUNCHER'))).toEqual([]);
  });

  // The shell line passes its arguments on as they came: spaces, quotes, globs, dollars, an
  // empty one, and the launcher reached through a folder whose name has them too.
  it('passes_every_argument_through_its_shell_line_unchanged', () => {
    const odd = path.join(dir, "a dir with 'quotes' $HOME *");
    fs.mkdirSync(odd, { recursive: true });
    const link = path.join(odd, 'qcow2 link');
    fs.symlinkSync(BIN, link);
    const env = launcherEnv();
    const name = "disk 'one' $HOME *.qcow2";
    const made = spawnSync(link, ['create', '-q', '-f', 'qcow2', name, '16M'], { cwd: odd, env, encoding: 'utf8' });
    expect(made.status, made.stderr).toBe(0);
    expect(fs.readdirSync(odd).sort()).toEqual([name, 'qcow2 link'].sort());
    const info = spawnSync(link, ['info', '--output=json', name], { cwd: odd, env, encoding: 'utf8' });
    expect(info.status, info.stderr).toBe(0);
    expect((JSON.parse(info.stdout) as { filename: string })['filename']).toBe(name);
    const empty = spawnSync(link, ['info', ''], { cwd: odd, env, encoding: 'utf8' });
    expect(empty.status).toBe(1);
    expect(empty.stderr).not.toContain('qcow2 link');
  });

  it('info_loads_one_module_of_this_package_and_no_dependency', () => {
    expect(run(['create', '-q', 'img.qcow2', '1G'], dir).status).toBe(0);
    const r = run(['info', 'img.qcow2'], dir);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('virtual size: 1 GiB (1073741824 bytes)');
    expect(r.modules).toEqual([BIN]);
    expect(r.builtins.filter((m) => HEAVY_BUILTINS.includes(m))).toEqual([]);
  });

  // A plain import (a local raw or qcow2 file, no checksum, no compression): commander runs
  // from the bundle, and nothing loads Node's child_process (commander's, for executable
  // subcommands), streams, crypto or zlib, which only other sources need.
  it('a_plain_import_loads_no_stream_network_crypto_or_compression_module', () => {
    const r = run(['convert', '-O', 'qcow2', 'img.qcow2', 'copy.qcow2'], dir);
    expect(r.status, r.stderr).toBe(0);
    expect(r.modules.some((m) => m.includes(`${path.sep}commander${path.sep}`))).toBe(false);
    expect(r.builtins.filter((m) => HEAVY_BUILTINS.includes(m) && m !== 'worker_threads')).toEqual([]);
  });

  it('a_command_that_changes_an_image_loads_its_dependencies_from_node_modules_only', () => {
    const r = run(['resize', 'img.qcow2', '2G'], dir);
    expect(r.status, r.stderr).toBe(0);
    expect(r.modules.filter((m) => !m.includes(`${path.sep}node_modules${path.sep}`))).toEqual([BIN]);
  });

  // convert -p draws a progress bar on a terminal and prints qemu-img's `(x/100%)` lines
  // anywhere else; telling them apart must not load Node's tty for a pipe, a file or /dev/null.
  it('tells_a_terminal_from_a_pipe_a_file_and_dev_null', () => {
    let n = 0;
    const argv = () => ['convert', '-p', '-O', 'qcow2', 'img.qcow2', `p${n++}.qcow2`];
    const piped = run(argv(), dir);
    expect(piped.status, piped.stderr).toBe(0);
    expect(piped.stdout).toContain('(100.00/100%)');
    expect(piped.builtins).not.toContain('tty');
    for (const target of ['/dev/null', path.join(dir, 'progress.txt')]) {
      const fd = fs.openSync(target, 'w');
      try {
        const r = run(argv(), dir, fd);
        expect(r.status, r.stderr).toBe(0);
        expect(r.builtins, target).not.toContain('tty');
      } finally {
        fs.closeSync(fd);
      }
    }
    expect(fs.readFileSync(path.join(dir, 'progress.txt'), 'utf8')).toContain('(100.00/100%)');
    // A terminal: util-linux's script(1) runs the command on a pseudo-terminal.
    const script = spawnSync('script', ['-qec', `'${BIN}' ${argv().join(' ')}`, '/dev/null'], {
      cwd: dir, encoding: 'utf8', env: launcherEnv(),
    });
    if (script.error !== undefined) return void console.warn('executable: script(1) not installed; the terminal case is skipped');
    expect(script.status, script.stderr).toBe(0);
    expect(script.stdout).toContain('100%');
    expect(script.stdout).not.toContain('(100.00/100%)');
  });

  // The codec threads start from the compiled tree beside the bundle (not from the sources): a
  // compressed convert and the decoding of its result, as an installed `qcow2` runs them.
  it.skipIf(!haveQemu && !requireQemu)('compresses_and_decodes_on_its_codec_threads_byte_for_byte_with_qemu_img', () => {
    const raw = path.join(dir, 'text.raw');
    // 4,096,000 bytes: whole sectors, so the raw copy made back has the same length.
    fs.writeFileSync(raw, Buffer.from('qcow2 codec threads '.repeat(204_800)));
    for (const type of ['zlib', 'zstd']) {
      const o = ['-f', 'raw', '-O', 'qcow2', '-o', `compression_type=${type}`, raw];
      const ours = run(['convert', '-c', ...o, `ours-${type}.qcow2`], dir);
      expect(ours.status, ours.stderr).toBe(0);
      const theirs = spawnSync('qemu-img', ['convert', '-c', ...o, `theirs-${type}.qcow2`], { cwd: dir, encoding: 'utf8' });
      expect(theirs.status, theirs.stderr).toBe(0);
      expect(fs.readFileSync(path.join(dir, `ours-${type}.qcow2`)).equals(fs.readFileSync(path.join(dir, `theirs-${type}.qcow2`))), type).toBe(true);
      const back = run(['convert', '-O', 'raw', `ours-${type}.qcow2`, `back-${type}.raw`], dir);
      expect(back.status, back.stderr).toBe(0);
      expect(fs.readFileSync(path.join(dir, `back-${type}.raw`)).equals(fs.readFileSync(raw)), type).toBe(true);
    }
  });

  // qemu-img's stdout is block-buffered to a pipe (C stdio), its stderr not: with both on one
  // pipe, check -r's repair lines (stderr) come before its summary (stdout). iotest 271 reads it so.
  it.skipIf(!haveQemu && !requireQemu)('to_a_pipe_prints_standard_output_after_standard_error_as_qemu_img_does', () => {
    const sh = (cmd: string) => spawnSync('sh', ['-c', cmd], { cwd: dir, encoding: 'utf8' });
    // An unaligned data cluster offset (L2 entry of guest cluster 0, in the L2 table at cluster
    // 4): check -r all rebuilds the refcounts and still finds it, on stderr, after its summary
    // of the repair began on stdout.
    const setup = (img: string) => {
      const r = sh(`qemu-img create -q -f qcow2 ${img} 1M && qemu-io -c 'write -q 0 64k' ${img} && ` +
        `printf '\\002' | dd of=${img} bs=1 seek=${4 * 65536 + 6} conv=notrunc status=none`);
      expect(r.status, r.stderr).toBe(0);
    };
    setup('q.qcow2');
    setup('o.qcow2');
    const theirs = sh('qemu-img check -r all q.qcow2 2>&1 | cat');
    const ours = sh(`'${process.execPath}' '${BIN}' check -r all o.qcow2 2>&1 | cat`);
    expect(theirs.stdout).toMatch(/Data cluster is not properly aligned; L2 entry corrupted.\nThe following inconsistencies were found and repaired:\n/);
    expect(ours.stdout.replace(/o\.qcow2/g, 'q.qcow2')).toBe(theirs.stdout);
  });

  it('prints_the_package_version', () => {
    const r = run(['--version'], dir);
    expect(r.stdout).toBe(`${PKG.version}\n`);
  });
});

describe('the code cache built with the executable', () => {
  // The launcher's own module, as installed: load() compiles the bundle with or without a cache.
  const launcher = require(BIN) as typeof import('../../provider/cli/qcow2');

  // In a process of its own, under the V8 flags the launcher sets (a cache made under other
  // flags is rejected: it was, for every command, while the build made it without them).
  it('is_accepted_by_the_node_that_built_it_under_the_launchers_flags', () => {
    const probe = (flags: boolean) => spawnSync(process.execPath, ['-e', `const l = require(${JSON.stringify(BIN)}); ${flags ? 'l.setStartFlags();' : ''}
      process.stdout.write(String(l.load(require('fs').readFileSync(l.CODE_CACHE)).script.cachedDataRejected));`], { encoding: 'utf8' });
    const launched = probe(true);
    expect(launched.stdout, launched.stderr).toBe('false');
    expect(probe(false).stdout).toBe('true'); // the flags are part of what V8 checks
  });

  it('when_rejected_or_missing_the_command_line_still_runs', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-cache-'));
    try {
      // A copy of the launcher and the bundle beside a cache V8 cannot use, then beside none.
      for (const f of ['qcow2.js', 'qcow2-bundle.js']) fs.copyFileSync(path.join(path.dirname(BIN), f), path.join(dir, f));
      fs.writeFileSync(path.join(dir, 'qcow2-bundle.cache'), Buffer.alloc(1024, 7));
      const copy = require(path.join(dir, 'qcow2.js')) as typeof launcher;
      expect(copy.load(fs.readFileSync(copy.CODE_CACHE)).script.cachedDataRejected).toBe(true);
      // (info needs no dependency, so the copy runs outside the package's node_modules.)
      expect(spawnSync(process.execPath, [BIN, 'create', '-q', 'x.qcow2', '1M'], { cwd: dir }).status).toBe(0);
      for (const withCache of [true, false]) {
        if (!withCache) fs.rmSync(path.join(dir, 'qcow2-bundle.cache'));
        const i = spawnSync(process.execPath, [path.join(dir, 'qcow2.js'), 'info', 'x.qcow2'], { cwd: dir, encoding: 'utf8' });
        expect(i.status, i.stderr).toBe(0);
        expect(i.stdout).toContain('virtual size: 1 MiB (1048576 bytes)');
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
