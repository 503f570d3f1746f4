// `npm run iotests -- [options] [TEST...]`: QEMU's qemu-iotests with the qcow2 command line in
// place of qemu-img (or, with --real, the real qemu-img), printing the pass count; exits 1 when
// fewer than --min tests pass. See test/iotests/README.md.

import { Command, Option } from 'commander';
import * as fs from 'fs';
import { lists, missingPrerequisites, readList, runIotests, summary, type Mode, type TestOutcome } from './harness';
import { iotestsSource, SourceUnavailable } from './sources';

interface Opts {
  real?: boolean;
  list: string;
  all?: boolean;
  min?: string;
  jobs: string;
  keep?: boolean;
  diffs?: boolean;
  json?: string;
  writePassing?: string;
}

function listFile(name: string): string {
  return name === 'qcow2' || name === 'ci' ? lists[name] : name;
}

async function main(argv: string[]): Promise<number> {
  const program = new Command('iotests')
    .description('run qemu-iotests (qcow2) with the qcow2 command line in place of qemu-img')
    .option('--real', 'use the real qemu-img everywhere (the baseline)')
    .addOption(new Option('--list <name>', "tests to run: 'qcow2' (those passing with qemu-img), 'ci' (the CI subset) or a file").default('qcow2'))
    .option('--all', 'run every test of the suite (to find which pass with --real)')
    .option('--min <n>', 'exit 1 when fewer than n tests pass')
    .addOption(new Option('-j, --jobs <n>', 'tests run in parallel by check').default('1'))
    .option('--keep', 'keep the run folder (scratch images, NNN.out.bad of failing tests)')
    .option('--diffs', "print check's diffs of the failing tests")
    .option('--json <file>', 'write every outcome (name, status, seconds) to a JSON file')
    .option('--write-passing <file>', 'write the names of the passing tests to a file (one a line)')
    .argument('[tests...]', 'test names (001, copy-before-write...) instead of a list')
    .showHelpAfterError();
  program.parse(argv, { from: 'user' });
  const o = program.opts<Opts>();
  const mode: Mode = o.real ? 'real' : 'ours';

  const missing = missingPrerequisites(mode);
  if (missing.length) {
    console.error(`iotests: cannot run without ${missing.join('; ')}`);
    return 1;
  }
  let source;
  try {
    source = iotestsSource();
  } catch (e) {
    if (!SourceUnavailable.isInstance(e)) throw e;
    console.error(`iotests: the tests could not be fetched: ${e.message}`);
    return 1;
  }
  // No names: check selects every test of the suite (less its 'disabled' group).
  const tests = program.args.length ? program.args : o.all ? [] : readList(listFile(o.list));
  console.log(`iotests: ${tests.length || 'all'} tests from ${source.label}, ${mode === 'real' ? 'real qemu-img' : 'qcow2 CLI as qemu-img'}`);

  // check runs in its own process group: pass an interrupt on to it.
  const stop = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => stop.abort());
  const r = await runIotests({
    mode, tests, source, jobs: Number(o.jobs), keep: o.keep, signal: stop.signal,
    onOutcome: (t: TestOutcome) => console.log(`${t.name.padEnd(28)} ${t.status.padEnd(8)} ${t.seconds.toFixed(1).padStart(6)} s`),
  });
  if (o.diffs && r.diffs) console.log(r.diffs);
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(r.outcomes.map((t) => ({ ...t, routed: r.routed.get(t.name) ?? [] })), null, 2) + '\n');
  if (o.writePassing) fs.writeFileSync(o.writePassing, r.passed.join('\n') + '\n');
  if (o.keep) console.log(`iotests: run folder kept: ${r.runDir}`);
  console.log(summary(r));
  if (o.min !== undefined && r.passed.length < Number(o.min)) {
    console.log(`iotests: ${r.passed.length} passed, fewer than the ${o.min} required`);
    return 1;
  }
  return 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e: Error) => {
  console.error(`iotests: ${e.message}`);
  process.exitCode = 1;
});
