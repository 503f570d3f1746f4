// qemu-img's info JSON <-> the image facts: exact 64-bit values, qemu-img's key order, a round
// trip through both converters.

import { describe, expect, it } from 'vitest';
import type { ImageFacts } from '../../provider/model/facts';
import { factsFromInfoJson, infoJsonOf, type ImageInfoJson } from '../../provider/model/qemu-json';
import { infoJsonText } from '../../provider/cli/render/info';

const base: ImageFacts = {
  virtualSize: 1n << 30n, actualSize: 200704n, clusterSize: 65536, compat: '1.1', refcountBits: 16, lazyRefcounts: true,
  extendedL2: false, compressionType: 'zlib', hasDataFile: true, dataFile: 'img.raw', dataFileRaw: true, backingFile: undefined,
  dirty: false, corrupt: false, snapshots: 1, bitmaps: ['b0'],
  detail: {
    snapshots: [{ id: '1', name: 's1', vmStateSize: 0n, dateSec: 1700000000, dateNsec: 5, vmClockNsec: 3_000_000_007n }],
    bitmaps: [{ name: 'b0', granularity: 65536, flags: ['auto'], inconsistent: false }],
  },
};
delete base.backingFile;

describe('qemu-img info JSON', () => {
  it('round_trips_facts_through_the_json', () => {
    const j = infoJsonOf(base, 'img.qcow2');
    expect(factsFromInfoJson(JSON.parse(JSON.stringify(j)) as ImageInfoJson)).toEqual(base);
  });

  it('orders_format_specific_keys_as_qemu_img', () => {
    expect(Object.keys(infoJsonOf(base, 'img.qcow2')['format-specific']!.data)).toEqual([
      'compat', 'compression-type', 'lazy-refcounts', 'bitmaps', 'refcount-bits', 'data-file', 'data-file-raw', 'corrupt', 'extended-l2',
    ]);
    const v2 = infoJsonOf({ ...base, compat: '0.10', lazyRefcounts: false, hasDataFile: false, dataFileRaw: false, dataFile: undefined as never, bitmaps: [], detail: { snapshots: [], bitmaps: [] } }, 'x');
    expect(Object.keys(v2['format-specific']!.data)).toEqual(['compat', 'compression-type', 'refcount-bits']);
  });

  it('keeps_sizes_above_2_53_exact_in_both_directions', () => {
    const huge = (1n << 62n) + 1n;
    const text = infoJsonText({ ...base, virtualSize: huge }, 'img.qcow2');
    expect(text).toContain(`"virtual-size": ${huge},`);
    expect(factsFromInfoJson(JSON.parse(text) as ImageInfoJson, text).virtualSize).toBe(huge);
  });
});
