// The resource's state <-> the image facts: bigint sizes exact as numbers below 2^53 and as
// strings above; the facts the rules decide on (snapshots, bitmaps) survive the round trip.

import { describe, expect, it } from 'vitest';
import type { ImageFacts } from '../../provider/model/facts';
import { bytesIn, bytesOut, factOutputs, factsOfState } from '../../provider/resource/state';
import { validateAmend } from '../../provider/rules/amend';

const facts: ImageFacts = {
  virtualSize: 1n << 30n, actualSize: 196608n, clusterSize: 65536, compat: '1.1', refcountBits: 16, lazyRefcounts: false, extendedL2: false,
  compressionType: 'zlib', hasDataFile: false, dataFileRaw: false, dirty: false, corrupt: false, snapshots: 2, bitmaps: ['b0', 'b1'],
  backingFile: '/images/base.qcow2', backingFormat: 'qcow2',
};

describe('resource state <-> facts', () => {
  it('writes_sizes_as_numbers_while_exact_and_as_strings_beyond', () => {
    expect(bytesOut(BigInt(Number.MAX_SAFE_INTEGER))).toBe(Number.MAX_SAFE_INTEGER);
    expect(bytesOut(BigInt(Number.MAX_SAFE_INTEGER) + 1n)).toBe('9007199254740992');
    expect(bytesIn('9223372035781033984')).toBe(9223372035781033984n);
    expect(bytesIn(1073741824)).toBe(1n << 30n);
  });

  it('round_trips_what_the_rules_decide_on', () => {
    const back = factsOfState(factOutputs(facts));
    expect(back).toEqual({ ...facts });
  });

  it('carries_snapshots_so_a_v2_resize_is_refused_from_state_as_from_the_image', () => {
    const v2 = { ...facts, compat: '0.10' as const, bitmaps: [] };
    const fromState = factsOfState(factOutputs(v2));
    expect(validateAmend(fromState, { size: 2n << 30n })).toEqual(validateAmend(v2, { size: 2n << 30n }));
    expect(validateAmend(fromState, { size: 2n << 30n })?.message).toMatch(/v2 image which has snapshots/);
  });

  it('reads_a_state_written_before_snapshots_were_recorded', () => {
    const { snapshots: _s, ...old } = factOutputs(facts);
    expect(factsOfState(old as never).snapshots).toBe(0);
  });
});
