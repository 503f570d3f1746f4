// `qemu-img check` output from a check result: the JSON object, the human summary, the exit status.

import type { CheckResult } from '../../qcow2/ops/check';

export interface CheckJson {
  'image-end-offset'?: number;
  'total-clusters': number;
  'check-errors': number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
  leaks?: number;
  corruptions?: number;
  'leaks-fixed'?: number;
  'corruptions-fixed'?: number;
  filename: string;
  format: 'qcow2';
}

/**
 * qemu-img prints the check's QDict in hash-bucket order (qdict.c: tdb_hash(key) % 512), not in
 * the QAPI field order: image-end-offset 30, compressed-clusters 67, total-clusters 169,
 * corruptions 181, corruptions-fixed 203, check-errors 204, leaks 246, leaks-fixed 290,
 * allocated-clusters 304, filename 313, format 337, fragmented-clusters 484.
 */
const QDICT_ORDER: ReadonlyArray<keyof CheckJson> = [
  'image-end-offset', 'compressed-clusters', 'total-clusters', 'corruptions', 'corruptions-fixed', 'check-errors', 'leaks',
  'leaks-fixed', 'allocated-clusters', 'filename', 'format', 'fragmented-clusters',
];

/**
 * `qemu-img check --output=json`: zero counters other than check-errors are omitted; after a
 * repair, what it fixed (`fixed`) too.
 */
export function checkJson(r: CheckResult, filename: string, fixed?: { leaks: number; corruptions: number }): CheckJson {
  const j: CheckJson = { 'total-clusters': r.totalClusters, 'check-errors': r.checkErrors, filename, format: 'qcow2' };
  if (r.imageEndOffset) j['image-end-offset'] = r.imageEndOffset;
  if (r.allocatedClusters) j['allocated-clusters'] = r.allocatedClusters;
  if (r.fragmentedClusters) j['fragmented-clusters'] = r.fragmentedClusters;
  if (r.compressedClusters) j['compressed-clusters'] = r.compressedClusters;
  if (r.leaks) j.leaks = r.leaks;
  if (r.corruptions) j.corruptions = r.corruptions;
  if (fixed?.leaks) j['leaks-fixed'] = fixed.leaks;
  if (fixed?.corruptions) j['corruptions-fixed'] = fixed.corruptions;
  const ordered: Record<string, unknown> = {};
  for (const k of QDICT_ORDER) if (j[k] !== undefined) ordered[k] = j[k];
  return ordered as unknown as CheckJson;
}

/** `qemu-img check` human summary (stdout). */
export function checkHumanText(r: CheckResult): string {
  let out = '';
  if (!(r.corruptions || r.leaks || r.checkErrors)) {
    out += 'No errors were found on the image.\n';
  } else {
    if (r.corruptions) out += `\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    if (r.leaks) out += `\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    if (r.checkErrors) out += `\n${r.checkErrors} internal errors have occurred during the check.\n`;
  }
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    const pct = (a: number, b: number) => ((a * 100) / b).toFixed(2);
    out += `${r.allocatedClusters}/${r.totalClusters} = ${pct(r.allocatedClusters, r.totalClusters)}% allocated, ` +
      `${pct(r.fragmentedClusters, r.allocatedClusters)}% fragmented, ${pct(r.compressedClusters, r.allocatedClusters)}% compressed clusters\n`;
  }
  if (r.imageEndOffset) out += `Image end offset: ${r.imageEndOffset}\n`;
  return out;
}

/** What qemu-img check -r prints (stdout, human) when it repaired something, before the second check. */
export function repairedText(leaksFixed: number, corruptionsFixed: number): string {
  return 'The following inconsistencies were found and repaired:\n\n' +
    `    ${leaksFixed} leaked clusters\n    ${corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`;
}

/** Exit status of qemu-img check: 0 clean, 1 could not check, 2 corruptions, 3 leaks only. */
export function checkExitCode(r: CheckResult): number {
  if (r.checkErrors) return 1;
  if (r.corruptions) return 2;
  if (r.leaks) return 3;
  return 0;
}
