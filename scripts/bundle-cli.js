// The `qcow2` executable (package.json "bin", dist/provider/cli/qcow2.js, from provider/cli/qcow2.ts)
// runs the command line as tsc compiled it (dist/provider/cli/main.js) and every module of this
// package it can run, bundled by esbuild into one file, dist/provider/cli/qcow2-bundle.js, with
// V8's code cache for that file, qcow2-bundle.cache, made here. Commander, which every command
// runs, is bundled too (its MIT licence at the top of the bundle); the other dependencies
// (cli-progress, koffi, ...) stay in node_modules and load when a command needs them.
//
// Why: a short command's cost is mostly Node's loading and V8's compiling of modules, not its
// work. Node 20 resolves each module in JavaScript, and past half a dozen modules that resolution
// is hot enough for V8 to optimise it, which alone costs about as much CPU as reading an image's
// header; one file removes that. Compiling the file's functions is the next cost: the code cache,
// made after running info, check and map once on a small image, holds their bytecode.
// Together they make `qcow2 info` cost little more than Node's own start-up
// (bench/cli-startup.ts). The bundled code is tsc's output unchanged, each module kept as it was
// (esbuild's CommonJS wrappers), and runs each module's body only when it is first required.
const fs = require('fs');
const os = require('os');
const path = require('path');
const esbuild = require('esbuild');

const root = path.resolve(__dirname, '..');
const cliDir = path.join(root, 'dist', 'provider', 'cli');
const launcher = path.join(cliDir, 'qcow2.js');
const { BUNDLE, CODE_CACHE, DEFERRED_CA_CERTS: DEFERRED, INTERRUPT_BUDGET, load, setStartFlags } = require(launcher);

const pkg = require(path.join(root, 'package.json'));
/** Bundled from node_modules: the command-line parser, loaded by every command (10 ms of each from node_modules). */
const BUNDLED = new Set(['commander']);
const external = Object.keys({ ...pkg.dependencies, ...pkg.peerDependencies, ...pkg.devDependencies }).filter((d) => !BUNDLED.has(d));
const licence = (name) => fs.readFileSync(path.join(root, 'node_modules', name, 'LICENSE'), 'utf8').trim();

// Commander requires child_process at load for executable subcommands, which this command line
// has none of; Node's child_process brings net, dgram and the stream machinery (4 ms of every
// command). In the bundle, commander gets it on first use instead.
const lazyChildProcess = {
  name: 'lazy-child-process',
  setup(build) {
    build.onResolve({ filter: /^(node:)?child_process$/ }, (args) =>
      /[\\/]node_modules[\\/]commander[\\/]/.test(args.importer) ? { path: 'child_process', namespace: 'lazy-builtin' } : undefined);
    build.onLoad({ filter: /.*/, namespace: 'lazy-builtin' }, () => ({
      contents: 'let m; module.exports = new Proxy({}, { get: (_, k) => (m ??= require("child_process"))[k] });',
      loader: 'js',
    }));
  },
};

const bundled = esbuild.build({
  entryPoints: [path.join(cliDir, 'main.js')],
  outfile: BUNDLE,
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  external,
  plugins: [lazyChildProcess],
  banner: { js: [...BUNDLED].map((d) => `/*! ${d} ${require(path.join(root, 'node_modules', d, 'package.json')).version}, bundled:\n${licence(d)}\n*/`).join('\n') },
  // Whitespace only (names and syntax stay as tsc wrote them): less for V8 to scan when the
  // cache cannot be used. qcow2-bundle.js.map leads back to the TypeScript (through tsc's maps).
  minifyWhitespace: true,
  sourcemap: true,
  sourcesContent: false,
  logLevel: 'warning',
});
// The launcher's first two lines, as tsc wrote them, become a script that /bin/sh and Node both
// read (the line count stays, so tsc's source map of it still holds). The shell starts Node on
// the file itself without NODE_EXTRA_CA_CERTS, which Node 20 reads and parses at start-up with
// its whole bundled CA store whatever the command (0.09 s of CPU on a machine that names the
// system bundle there; nodejs/node#40524): the launcher puts it back in process.env
// (restoreExtraCaCerts), where the HTTPS client reads it on the first https:// source
// (transport/http/tls.ts). Node reads the second line as the string ':' and a comment, before
// "use strict" (both stay directives). V8's flags for a command (setStartFlags) go on Node's
// command line there, which spares the launcher loading the v8 module to set them.
const HEAD = '#!/usr/bin/env node\n"use strict";\n';
const SHELL = [
  `if [ -n "\${NODE_EXTRA_CA_CERTS:-}" ]; then ${DEFERRED}=$NODE_EXTRA_CA_CERTS; export ${DEFERRED}; unset NODE_EXTRA_CA_CERTS; fi`,
  `exec node --interrupt-budget=${INTERRUPT_BUDGET} "$0" "$@"`,
].join('; ');
const text = fs.readFileSync(launcher, 'utf8');
if (text.startsWith(HEAD)) {
  fs.writeFileSync(launcher, `#!/bin/sh\n':' /*; ${SHELL} # */; "use strict";\n${text.slice(HEAD.length)}`);
} else if (!text.startsWith('#!/bin/sh\n')) {
  throw new Error(`bundle-cli: ${path.relative(root, launcher)} does not start as tsc writes it`);
}
fs.chmodSync(launcher, 0o755);

/** Run the commands a short invocation runs, in this process, then keep what V8 compiled. */
async function makeCodeCache() {
  fs.rmSync(CODE_CACHE, { force: true });
  // Under the flags the launcher runs with: V8 rejects a cache made under other flags.
  setStartFlags();
  const { cli, script } = load();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-build-'));
  const sink = { out() {}, err() {} };
  try {
    // The image comes from the engine itself, not the bundle: what `create` compiles would only
    // make the cache larger for every command.
    const img = path.join(dir, 'warm.qcow2');
    require(path.join(root, 'dist', 'provider', 'engines', 'native', 'ops.js')).createImage(img, { size: 64n << 20n });
    for (const argv of [['info', img], ['info', '--output=json', img], ['check', img], ['map', img]]) {
      const code = await cli.main(argv, sink);
      if (code !== 0) throw new Error(`qcow2 ${argv.join(' ')} exited with ${code} while making the code cache`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  fs.writeFileSync(CODE_CACHE, script.createCachedData());
}

bundled.then(makeCodeCache).catch((e) => {
  console.error(`bundle-cli: ${e.message}`);
  process.exitCode = 1;
});
