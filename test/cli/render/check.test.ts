// qemu-img check's text forms from a result: the JSON in qemu-img's key order, the exit status.

import { describe, expect, it } from 'vitest';
import { checkExitCode, checkJson } from '../../../provider/cli/render/check';
import type { CheckResult } from '../../../provider/qcow2/ops/check';

const r: CheckResult = {
  messages: [], corruptions: 1, leaks: 2, checkErrors: 0, imageEndOffset: 4096, totalClusters: 16, allocatedClusters: 3,
  fragmentedClusters: 1, compressedClusters: 1,
};

describe('check rendering', () => {
  it('orders_json_keys_as_qemu_img_prints_them', () => {
    expect(Object.keys(checkJson(r, 'img.qcow2'))).toEqual([
      'image-end-offset', 'compressed-clusters', 'total-clusters', 'corruptions', 'check-errors', 'leaks', 'allocated-clusters', 'filename', 'format',
      'fragmented-clusters',
    ]);
  });

  it('omits_zero_counters_but_check_errors', () => {
    const clean = { ...r, corruptions: 0, leaks: 0, fragmentedClusters: 0, compressedClusters: 0 };
    expect(Object.keys(checkJson(clean, 'x'))).toEqual(['image-end-offset', 'total-clusters', 'check-errors', 'allocated-clusters', 'filename', 'format']);
  });

  it('exits_as_qemu_img_check', () => {
    expect(checkExitCode({ ...r, checkErrors: 1 })).toBe(1);
    expect(checkExitCode(r)).toBe(2);
    expect(checkExitCode({ ...r, corruptions: 0 })).toBe(3);
    expect(checkExitCode({ ...r, corruptions: 0, leaks: 0 })).toBe(0);
  });
});
