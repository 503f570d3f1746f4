// qemu-img's JSON outputs mapped onto our types: `info --output=json` to ImageInfo and to the
// rules' ImageState, `check --output=json` (plus its stderr lines) to CheckResult.

import type { CheckResult } from '../../qcow2/ops/check';
import { Qcow2Error } from '../../model/errors';
import type { ImageInfoJson } from '../../qcow2/ops/info';
import type { ImageState } from '../../rules/types';
import { ImageInfo, toImageInfo } from '../engine';

export interface ParsedInfo {
  json: ImageInfoJson;
  info: ImageInfo;
}

/**
 * Parse `qemu-img info --output=json`. The virtual size is read from the text as an exact
 * integer: JSON.parse would round sizes above 2^53 (qemu allows up to 2^63 - 2^30).
 */
export function parseInfo(stdout: string, file: string): ParsedInfo {
  let json: ImageInfoJson;
  try {
    json = JSON.parse(stdout) as ImageInfoJson;
  } catch (e) {
    throw new Qcow2Error('IO', `qemu-img info printed no JSON for '${file}': ${stdout.slice(0, 200)}`, { file, cause: e });
  }
  if (json.format !== 'qcow2' || json['format-specific']?.type !== 'qcow2') {
    throw new Qcow2Error('INVALID_IMAGE', 'Image is not in qcow2 format', { file });
  }
  const info = toImageInfo(json);
  const m = /^ {4}"virtual-size": (\d+),?$/m.exec(stdout);
  if (m) info.virtualSize = BigInt(m[1]!);
  return { json, info };
}

/** What the rules need to know about an image, from what qemu-img info reports. */
export function imageStateOf(p: ParsedInfo): ImageState {
  const i = p.info;
  const state: ImageState = {
    virtualSize: i.virtualSize,
    clusterSize: i.clusterSize,
    compat: i.compat,
    refcountBits: i.refcountBits,
    lazyRefcounts: i.lazyRefcounts,
    extendedL2: i.extendedL2,
    compressionType: i.compressionType,
    hasDataFile: i.hasDataFile,
    dataFileRaw: i.dataFileRaw,
    dirty: i.dirty,
    corrupt: i.corrupt,
    snapshots: i.snapshots,
    bitmaps: i.bitmaps.length,
  };
  if (i.dataFile !== undefined) state.dataFile = i.dataFile;
  if (i.backingFile !== undefined) state.backingFile = i.backingFile;
  if (i.backingFormat !== undefined) state.backingFormat = i.backingFormat;
  return state;
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
