// The CI subset of QEMU's qemu-iotests (ci-tests.txt) with the qcow2 command line in place of
// qemu-img. Fails when fewer pass than did when the subset was chosen; prints the pass count.
// Without the tests' sources (no network, no apt) or qemu-utils it skips with the reason, except
// under CI=true or REQUIRE_QEMU=1, where that is a failure.

import { describe, expect, it } from 'vitest';
import { lists, missingPrerequisites, readList, runIotests, summary } from './harness';
import { iotestsSource, SourceUnavailable, type IotestsSource } from './sources';

/** How many of ci-tests.txt pass today; raise it as features land, never lower it. */
const MIN_PASSING = 67;

const required = process.env.CI === 'true' || process.env.REQUIRE_QEMU === '1';

function sourceOrSkipReason(): IotestsSource | string {
  const missing = missingPrerequisites('ours');
  if (missing.length) {
    if (required) throw new Error(`qemu-iotests need ${missing.join('; ')}`);
    return `missing ${missing.join('; ')}`;
  }
  try {
    return iotestsSource((s) => console.log(s));
  } catch (e) {
    if (!SourceUnavailable.isInstance(e) || required) throw e;
    return `the tests could not be fetched: ${e.message}`;
  }
}

describe('qemu-iotests (CI subset) with the qcow2 CLI as qemu-img', () => {
  const tests = readList(lists.ci);

  // One check run: its tests share the cost of starting check, and a hang has a bound.
  it(`passes at least ${MIN_PASSING} of the ${tests.length} tests in ci-tests.txt`, async (ctx) => {
    const source = sourceOrSkipReason();
    if (typeof source === 'string') {
      console.warn(`[iotests] skipping: ${source} (CI=true or REQUIRE_QEMU=1 makes this fail)`);
      ctx.skip();
      return;
    }
    const r = await runIotests({ mode: 'ours', tests, source, signal: ctx.signal });
    console.log(summary(r));
    expect(r.outcomes.map((o) => o.name).sort()).toEqual([...tests].sort());
    expect(r.passed.length, `passed: ${r.passed.join(' ')}; failed: ${r.failed.join(' ')}`).toBeGreaterThanOrEqual(MIN_PASSING);
  }, 30 * 60_000);
});
