// qemu-img's JSON outputs mapped onto our types: `info --output=json` to the image facts (the
// model's converter), `check --output=json` (plus its stderr lines) to CheckResult, `map
// --output=json` to map entries.

import type { CheckResult } from '../../qcow2/ops/check';
import type { MapEntry } from '../../qcow2/ops/map';
import { Qcow2Error } from '../../model/errors';
import type { ImageFacts } from '../../model/facts';
import { factsFromInfoJson, type ImageInfoJson } from '../../model/qemu-json';

/** `qemu-img info --output=json` as facts; 64-bit values read exactly from the text. */
export function parseInfo(stdout: string, file: string, format: 'qcow2' | 'raw' = 'qcow2'): ImageFacts {
  let json: ImageInfoJson;
  try {
    json = JSON.parse(stdout) as ImageInfoJson;
  } catch (e) {
    throw new Qcow2Error('IO', `qemu-img info printed no JSON for '${file}': ${stdout.slice(0, 200)}`, { file, cause: e });
  }
  if (format === 'raw' && json.format === 'raw') return factsFromInfoJson(json, stdout);
  if (json.format !== 'qcow2' || json['format-specific']?.type !== 'qcow2') {
    throw new Qcow2Error('INVALID_IMAGE', 'Image is not in qcow2 format', { file });
  }
  return factsFromInfoJson(json, stdout);
}

/** `qemu-img map --output=json` as map entries. */
export function parseMap(stdout: string, file: string): MapEntry[] {
  let rows: Array<Record<string, unknown>>;
  try {
    rows = JSON.parse(stdout) as Array<Record<string, unknown>>;
  } catch (e) {
    throw new Qcow2Error('IO', `qemu-img map printed no JSON for '${file}': ${stdout.slice(0, 200)}`, { file, cause: e });
  }
  return rows.map((r) => {
    const e: MapEntry = {
      start: Number(r.start), length: Number(r.length), depth: Number(r.depth),
      present: r.present === true, zero: r.zero === true, data: r.data === true,
    };
    if (typeof r.offset === 'number') e.offset = r.offset;
    return e;
  });
}

interface CheckJsonOut {
  'image-end-offset'?: number;
  'total-clusters'?: number;
  'check-errors'?: number;
  'allocated-clusters'?: number;
  'fragmented-clusters'?: number;
  'compressed-clusters'?: number;
  leaks?: number;
  corruptions?: number;
}

/** `qemu-img check --output=json` stdout, or undefined when it printed no report. */
export function parseCheck(stdout: string, stderr: string): CheckResult | undefined {
  const t = stdout.trim();
  if (!t.startsWith('{')) return undefined;
  let j: CheckJsonOut;
  try {
    j = JSON.parse(t) as CheckJsonOut;
  } catch {
    return undefined;
  }
  const messages = stderr.replace(/\r/g, '').split('\n').filter((l) => l !== '' && !l.startsWith('qemu-img: '));
  return {
    messages,
    corruptions: j.corruptions ?? 0,
    leaks: j.leaks ?? 0,
    checkErrors: j['check-errors'] ?? 0,
    imageEndOffset: j['image-end-offset'] ?? 0,
    totalClusters: j['total-clusters'] ?? 0,
    allocatedClusters: j['allocated-clusters'] ?? 0,
    fragmentedClusters: j['fragmented-clusters'] ?? 0,
    compressedClusters: j['compressed-clusters'] ?? 0,
  };
}
