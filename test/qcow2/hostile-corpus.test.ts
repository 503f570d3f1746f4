// The hostile corpus: mutated images (test/helpers/mutate.ts, from a fixed seed) and hostile
// environments (a FIFO, socket, device or folder where a backing file, data file or image should
// be; backing loops; an unreadable image), each run through every command of the `qcow2` command
// line and through the provider's read and adopt. Property: every run ends with an exit status or
// a typed error, never a stack trace; nothing hangs; the process's peak RSS stays under 200 MiB.
//
// The runs happen in a child process (test/helpers/hostile-worker.ts), one case per message, so
// that a hang or a runaway allocation is observed rather than suffered. The case count is fixed
// (HOSTILE_CASES overrides); the deadline below only tells a hang from a slow case and bounds
// nothing else. A failing case prints its name and the run's output.

import { fork } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import fc from 'fast-check';
import * as ts from 'typescript';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ChildWorker } from '../helpers/child-worker';
import { ENV_CASES, type HostileCase, type HostileReply, type RunResult } from '../helpers/hostile-worker';
import { CASE, apply, show } from '../helpers/mutate';

const SEED = Number(process.env.HOSTILE_SEED ?? 0x4057113);
const MUTATED = Number(process.env.HOSTILE_CASES ?? 40);
/** A case that has not answered by then is stuck: it waits on something that never comes. */
const HANG_MS = 120_000;
const RSS_LIMIT_MIB = 200;

function corpus(): Array<{ label: string; c: HostileCase }> {
  const out: Array<{ label: string; c: HostileCase }> = [];
  for (const m of fc.sample(CASE, { seed: SEED, numRuns: MUTATED })) {
    out.push({ label: `mutated ${show(m)}`, c: { kind: 'bytes', name: show(m), b64: apply(m).bytes.toString('base64') } });
  }
  for (const name of ENV_CASES) out.push({ label: `environment ${name}`, c: { kind: 'env', name } });
  return out;
}

const REPO = path.join(__dirname, '../..');
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-hostile-corpus-'));
/** The worker, transpiled to plain JavaScript, so that what runs is the engine and nothing else. */
const script = path.join(scratch, 'hostile-worker.js');
const worker = new ChildWorker<HostileReply>(() => fork(script, [], {
  // The heap limit only stops a runaway early; RSS is what the property measures.
  execArgv: ['--max-old-space-size=512'],
  env: { ...process.env, HOSTILE_REPO: REPO, LC_ALL: 'C' },
  stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
}), { wallMs: HANG_MS });
beforeAll(async () => {
  const source = fs.readFileSync(path.join(REPO, 'test/helpers/hostile-worker.ts'), 'utf8');
  fs.writeFileSync(script, ts.transpileModule(source, { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022 } }).outputText);
  await worker.start();
}, 120_000);
afterAll(async () => {
  await worker.stop();
  fs.rmSync(scratch, { recursive: true, force: true });
});

describe('hostile corpus', () => {
  it('the_stack_trace_detector_sees_what_node_prints', async () => {
    const { STACK_TRACE } = await import('../helpers/hostile-worker');
    expect(STACK_TRACE.test(new TypeError('x').stack!)).toBe(true);
    expect(STACK_TRACE.test('qcow2: Could not open \'img.qcow2\': Image is not in qcow2 format\n')).toBe(false);
    expect(STACK_TRACE.test('RangeError [ERR_OUT_OF_RANGE]: The value of "offset" is out of range')).toBe(true);
  });

  it(`every_command_and_the_provider_answer_${MUTATED}_mutated_images_and_${ENV_CASES.length}_hostile_environments_without_a_hang_a_stack_trace_or_200_MiB`, async () => {
    const cases = corpus();
    const failures: string[] = [];
    let runs = 0, hangs = 0, stacks = 0, peakKiB = 0; // hangs: a case unanswered, or a child that died
    const paths = new Set<string>();
    for (const [i, { label, c }] of cases.entries()) {
      const dir = path.join(scratch, `case-${i}`);
      fs.mkdirSync(dir);
      const v = await worker.run({ dir, case: c });
      fs.rmSync(dir, { recursive: true, force: true });
      if ('crash' in v) {
        hangs++;
        failures.push(`${label}: ${v.crash}`);
        continue;
      }
      if (process.env.HOSTILE_DEBUG && v.maxRssKiB > peakKiB) console.log(`rss ${(v.maxRssKiB / 1024).toFixed(1)} after ${label.slice(0, 300)}`);
      peakKiB = Math.max(peakKiB, v.maxRssKiB);
      for (const r of v.results as RunResult[]) {
        runs++;
        paths.add(r.path);
        if (r.outcome === 'stack') {
          stacks++;
          failures.push(`${label}\n  ${r.path}: ${r.detail.split('\n').slice(0, 6).join('\n    ')}`);
        }
      }
    }
    const peakMiB = peakKiB / 1024;
    console.log(`[hostile-corpus] seed=${SEED} cases=${cases.length} runs=${runs} paths=${paths.size} hangs=${hangs} stack-traces=${stacks} peak-rss=${peakMiB.toFixed(1)} MiB worker-restarts=${worker.restarts}`);
    expect(failures.slice(0, 12).join('\n\n')).toBe('');
    expect(runs).toBeGreaterThanOrEqual(500);
    expect(paths.size).toBe(16);
    expect(peakMiB).toBeLessThan(RSS_LIMIT_MIB);
  }, 1_800_000);
});
