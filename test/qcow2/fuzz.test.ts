// Fuzzing open / info / check with mutated valid images: random bytes in cluster 0 and in the
// table areas, truncations, bit flips and chosen or random values in header fields (offsets taken
// from the field tables; see test/helpers/mutate.ts). Property: every call either succeeds or
// throws a Qcow2Error, never asks the file for more than 64 MiB in one read nor makes more than
// MAX_READS reads (the images are tiny, so more means a hostile field drove unbounded work), and
// uses under 2 s of CPU. The bounds are counted or CPU time, never elapsed time, so a loaded
// machine cannot fail the test.
//
// The calls run in a child process with a heap limit and a CPU limit per case, so a case that
// hangs or exhausts memory is reported as a failure of this test rather than killing the test
// process.
// 10,000 cases under CI=true (2,000 locally) from a fixed seed; FUZZ_SEED / FUZZ_RUNS override,
// FUZZ_MAX_FAILURES (default 5) stops early, FUZZ_FAILURES_FILE=FILE writes every failure as JSON,
// FUZZ_CHECK_MODULE=PATH fuzzes another check.ts (a candidate fix in a scratch copy).
// A failing case prints as JSON: replay it with `apply(parseCase(json))` from test/helpers/mutate.ts.

import { fork } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ChildWorker, type Answer } from '../helpers/child-worker';
import type { CallResult, WorkerHello, WorkerReply } from '../helpers/fuzz-worker';
import { CASE, GuardedFile, MAX_READ, MAX_READS, SEEDS, UnboundedReadError, apply, parseCase, show } from '../helpers/mutate';
import { Image } from '../../provider/qcow2/meta/image';
import { infoOf } from '../../provider/qcow2/ops/info';

const SEED = Number(process.env.FUZZ_SEED ?? 0x0c0ffee);
const RUNS = Number(process.env.FUZZ_RUNS ?? (process.env.CI ? 10_000 : 2_000));
const MAX_FAILURES = Number(process.env.FUZZ_MAX_FAILURES ?? 5);
/** CPU time one call may use on a seed-sized image (typical: well under 10 ms). */
const CALL_CPU_BUDGET_MS = 2_000;
/** A case (all calls) whose child has used this much CPU without answering is a hang. */
const CASE_CPU_LIMIT_MS = 8_000;
/** How often the hang watch reads the child's CPU time. */
const HANG_POLL_MS = 250;

/** Child heap: far above what tiny images need, low enough to fail fast on unbounded growth. */
const WORKER_HEAP_MB = 192;

// ------------------------------------------------------------------------------------------------
// The worker
// ------------------------------------------------------------------------------------------------

type Verdict = Answer<WorkerReply>;

const repo = join(__dirname, '../..');
/** The child replays cases; a case whose child uses CASE_CPU_LIMIT_MS of CPU without answering is a hang. */
const worker = new ChildWorker<WorkerReply>(() => fork(join(repo, 'test/helpers/fuzz-worker.ts'), [], {
  execArgv: [`--max-old-space-size=${WORKER_HEAP_MB}`, '--require', require.resolve('ts-node/register/transpile-only', { paths: [repo] })],
  env: { ...process.env, TS_NODE_PROJECT: join(repo, 'tsconfig.json') },
  stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
}), { cpuMs: CASE_CPU_LIMIT_MS, pollMs: HANG_POLL_MS });
/** The calls the child makes (its ready message). */
let calls: string[] = [];
beforeAll(async () => {
  calls = ((await worker.start()) as WorkerHello).calls;
}, 60_000);
afterAll(() => worker.stop());

// ------------------------------------------------------------------------------------------------
// The property
// ------------------------------------------------------------------------------------------------

interface Failure { call: string; what: string; case: string }
/** Total CPU time spent in each call, and the most reads one call made, for the summary line. */
const callMs = new Map<string, number>();
let mostReads = 0;

function failuresOf(caseText: string, v: Verdict, stats: Map<string, number>): Failure[] {
  if ('crash' in v) return [{ call: 'worker', what: v.crash, case: caseText }];
  const out: Failure[] = [];
  for (const r of v.results) {
    callMs.set(r.call, (callMs.get(r.call) ?? 0) + r.cpuMs);
    mostReads = Math.max(mostReads, r.reads);
    const key = `${r.call}: ${r.outcome === 'qcow2' ? r.detail.replace(/\d+/g, 'N').slice(0, 70) : r.outcome}`;
    stats.set(key, (stats.get(key) ?? 0) + 1);
    if (r.outcome === 'unbounded') out.push({ call: r.call, what: `unbounded read: ${r.detail}`, case: caseText });
    if (r.outcome === 'threw') out.push({ call: r.call, what: `threw ${r.detail}`, case: caseText });
    if (r.cpuMs > CALL_CPU_BUDGET_MS) out.push({ call: r.call, what: `used ${r.cpuMs.toFixed(0)} ms of CPU (budget ${CALL_CPU_BUDGET_MS})`, case: caseText });
  }
  return out;
}

describe('fuzz: mutated images', () => {
  it('every_seed_opens_infos_and_checks_cleanly_before_mutation', async () => {
    for (const s of SEEDS) {
      expect(() => Image.open(new GuardedFile(s.bytes)), s.name).not.toThrow();
      expect(() => infoOf(new GuardedFile(s.bytes), 'x'), s.name).not.toThrow();
      expect(s.regions.length, s.name).toBeGreaterThan(3);
      const v = await worker.run({ case: show({ seed: SEEDS.indexOf(s), mutations: [] }) });
      expect(v, s.name).toHaveProperty('results');
      for (const r of (v as { results: CallResult[] }).results) expect(r.outcome, `${s.name} ${r.call} ${r.detail}`).toBe('ok');
    }
  });

  it('guarded_file_refuses_a_single_read_over_64_MiB', () => {
    const f = new GuardedFile(new Uint8Array(16));
    expect(f.read(0, 1024).length).toBe(1024);
    expect(() => f.read(0, MAX_READ + 1)).toThrow(UnboundedReadError);
  });

  it('guarded_file_refuses_more_than_MAX_READS_reads_in_one_call', () => {
    const f = new GuardedFile(new Uint8Array(16));
    for (let i = 1; i < MAX_READS; i++) f.read(0, 1);
    expect(f.read(0, 1).length).toBe(1);
    expect(() => f.read(8, 1)).toThrow(/more than 1000000 reads \(the last at offset 8\)/);
  });

  it('printed_cases_replay_to_the_same_bytes', () => {
    fc.assert(fc.property(CASE, (c) => {
      const again = parseCase(show(c));
      expect(again).toEqual(c);
      expect(apply(again).bytes.equals(apply(c).bytes)).toBe(true);
    }), { seed: SEED, numRuns: 200 });
  });

  it('check_is_exercised_when_check_ts_exists', () => {
    expect(calls.includes('checkImage')).toBe(existsSync(join(__dirname, '../../provider/qcow2/ops/check.ts')));
  });

  it(`open_info_and_check_succeed_or_throw_Qcow2Error_for_${RUNS}_mutations_seed_${SEED}`, async () => {
    const failures: Failure[] = [];
    const stats = new Map<string, number>();
    let cases = 0;
    const t0 = Date.now();
    await fc.assert(fc.asyncProperty(CASE, async (c) => {
      if (failures.length >= MAX_FAILURES) return true; // stop early: the run has already failed
      cases++;
      const text = show(c);
      failures.push(...failuresOf(text, await worker.run({ case: text }), stats));
      return true;
    }), { seed: SEED, numRuns: RUNS });
    const seconds = ((Date.now() - t0) / 1000).toFixed(1);
    const top = [...stats.entries()].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([k, v]) => `  ${v}\t${k}`).join('\n');
    console.log(`[fuzz] seed=${SEED} cases=${cases}/${RUNS} time=${seconds}s calls=${calls.join(',')} ` +
      `failures=${failures.length} worker-restarts=${worker.restarts} ` +
      `call-cpu-ms=${[...callMs].map(([k, v]) => `${k}:${v.toFixed(0)}`).join(',')} most-reads=${mostReads}/${MAX_READS}\n${top}`);
    if (failures.length > 0) {
      if (process.env.FUZZ_FAILURES_FILE) writeFileSync(process.env.FUZZ_FAILURES_FILE, failures.map((f) => JSON.stringify(f)).join('\n') + '\n');
      const kinds = new Map<string, number>();
      for (const f of failures) {
        const k = `${f.call}: ${f.what.split('\n')[0]!.replace(/\d+/g, 'N').slice(0, 100)}`;
        kinds.set(k, (kinds.get(k) ?? 0) + 1);
      }
      const byKind = [...kinds].map(([k, n]) => `  ${n}\t${k}`).join('\n');
      const list = failures.slice(0, 10).map((f) => `${f.call}: ${f.what.split('\n').slice(0, 4).join(' | ')}\n    case ${f.case}`).join('\n');
      expect.fail(`${failures.length} failures in ${cases} cases (FUZZ_SEED=${SEED}${failures.length >= MAX_FAILURES ? ', stopped early' : ''}):\n${byKind}\n\n${list}`);
    }
    expect(cases).toBe(RUNS);
  }, 600_000);
});
