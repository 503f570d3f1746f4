// The `qcow2` executable (package.json "bin"): the command line as tsc compiled it
// (dist/provider/cli/main.js) and every module of this package it can run, bundled by esbuild
// into one file, dist/provider/cli/qcow2.js. Dependencies (commander, cli-progress, koffi, ...)
// stay in node_modules and load when a command needs them.
//
// Why: a short command's cost is mostly Node's loading of modules, not its work. Node 20 resolves
// each module in JavaScript, and past half a dozen modules that resolution is hot enough for V8 to
// optimise it, which alone costs about as much CPU as reading an image's header. One file makes
// `qcow2 info` cost little more than Node's own start-up (bench/cli-startup.ts). The bundled code
// is tsc's output unchanged, each module kept as it was (esbuild's CommonJS wrappers), and runs
// each module's body only when it is first required, as before.
const fs = require('fs');
const path = require('path');
const esbuild = require('esbuild');

const root = path.resolve(__dirname, '..');
const outfile = path.join(root, 'dist', 'provider', 'cli', 'qcow2.js');

esbuild.buildSync({
  entryPoints: [path.join(root, 'dist', 'provider', 'cli', 'main.js')],
  outfile,
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  packages: 'external',
  // Whitespace only (names and syntax stay as tsc wrote them): a tenth less for V8 to scan at
  // every start. qcow2.js.map leads back to the TypeScript sources (through tsc's maps).
  minifyWhitespace: true,
  sourcemap: true,
  sourcesContent: false,
  logLevel: 'warning',
});
fs.chmodSync(outfile, 0o755);
