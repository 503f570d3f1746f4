// Shared material for the provider/rules suites: image states as `info` would report them, the
// "way forward" check every user-facing refusal must pass, and the qemu-img differential plumbing
// (temp dirs, -o strings, message extraction, skip-or-fail when qemu-img is absent).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe } from 'vitest';

import type { CreateOptions } from '../../provider/model/options';
import type { AmendRequest, ImageFacts } from '../../provider/rules/types';
import { qemuImgAvailable, qemuImgPath, requireQemu, runQemuImg, type QemuImgResult } from '../helpers/qemu';

export const KiB = 1024n;
export const MiB = 1024n * KiB;
export const GiB = 1024n * MiB;

/** A freshly created `qemu-img create -f qcow2 img.qcow2 1M`, as the rules see it. */
export function plainState(over: Partial<ImageFacts> = {}): ImageFacts {
  return {
    virtualSize: MiB,
    clusterSize: 65536,
    compat: '1.1',
    refcountBits: 16,
    lazyRefcounts: false,
    extendedL2: false,
    compressionType: 'zlib',
    hasDataFile: false,
    dataFileRaw: false,
    dirty: false,
    corrupt: false,
    snapshots: 0,
    bitmaps: [],
    actualSize: 0n,
    hasCompressedClusters: false,
    preallocation: 'off',
    ...over,
  };
}

/** Internal snapshots as info reads them: disk size `diskSize` each (undefined: not read, as from qemu-img info), no VM state unless given. */
export function snapshotsOf(diskSizes: Array<bigint | undefined>, vmStateSize = 0n): NonNullable<ImageFacts['detail']> {
  return {
    bitmaps: [],
    snapshots: diskSizes.map((d, i) => ({
      id: String(i + 1), name: `s${i + 1}`, vmStateSize, dateSec: 0, dateNsec: 0, vmClockNsec: 0n, ...(d !== undefined ? { diskSize: d } : {}),
    })),
  };
}

export const v2State = (over: Partial<ImageFacts> = {}): ImageFacts => plainState({ compat: '0.10', ...over });
export const dataFileState = (over: Partial<ImageFacts> = {}): ImageFacts =>
  plainState({ hasDataFile: true, dataFile: 'img.raw', ...over });
export const rawState = (over: Partial<ImageFacts> = {}): ImageFacts =>
  dataFileState({ dataFileRaw: true, preallocation: 'metadata', ...over });
export const overlayState = (over: Partial<ImageFacts> = {}): ImageFacts =>
  plainState({ backingFile: 'base.qcow2', backingFormat: 'qcow2', ...over });

/**
 * A refusal shown to a person must say what to do instead: an imperative verb at the start of a
 * sentence or clause ("Create a new image ...", "..., or keep ...", "(use compat=1.1 ...)").
 * A verb inside a description ("features 0x10 set") does not count.
 */
/** An Image input, as a program sets it: a way forward that changes the program names one. */
export const INPUT_NAME =
  /\b(path|size|clusterSize|compat|lazyRefcounts|refcountBits|extendedL2|compressionType|preallocation|backingFile|backingFormat|dataFile|dataFileRaw|adopt|source|allowShrink|allowReplace|engine)\b/;

export const WAY_FORWARD =
  /(^|[.:;,(]\s*|\bor\s+|\bthen\s+)(create|set|clear|move|copy|point|keep|convert|use|remove|omit|round|upgrade|rename|wrap|choose|give|pass|run|delete|add|enable|disable|resize)\b/i;

// ------------------------------------------------------------------------------------------------
// qemu-img differential plumbing
// ------------------------------------------------------------------------------------------------

export const HAVE_QEMU = qemuImgAvailable();
export const QEMU_SKIP_REASON =
  `${qemuImgPath} not found ($QEMU_IMG or PATH; apt-get install qemu-utils; CI=true or REQUIRE_QEMU=1 makes this a failure)`;

/**
 * describe() for suites that run qemu-img: skipped with the reason in the title (and on the
 * console) when qemu-img is absent; when it is required (CI=true, REQUIRE_QEMU=1) the suite runs
 * and fails in runQemuImg with a message naming the cause.
 */
export function describeWithQemu(title: string, fn: () => void): void {
  // qemu-img is missing and not required (no CI=true / REQUIRE_QEMU=1): skip, visibly.
  const skip = !HAVE_QEMU && !requireQemu;
  if (skip) console.warn(`[rules] SKIPPED "${title}": ${QEMU_SKIP_REASON}`);
  describe.skipIf(skip)(skip ? `${title} [SKIPPED: ${QEMU_SKIP_REASON}]` : title, fn);
}

export function makeTempRoot(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `qcow2-rules-${prefix}-`));
}

export function removeTree(dir: string): void {
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
}

/** Runs qemu-img and throws with its stderr when it fails (for setup steps). */
export function mustQemu(args: string[], cwd: string): QemuImgResult {
  const r = runQemuImg(args, { cwd });
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return r;
}

/** qemu-img's error text: stderr without the `qemu-img: ` (and `FILE: `) prefix, trailing newline trimmed. */
export function qemuMessage(stderr: string, file?: string): string {
  let s = stderr.replace(/\s+$/, '');
  if (s.startsWith('qemu-img: ')) s = s.slice('qemu-img: '.length);
  if (file !== undefined && s.startsWith(`${file}: `)) s = s.slice(file.length + 2);
  return s;
}

const onOff = (b: boolean): string => (b ? 'on' : 'off');

/** The `-o` text of qemu-img create for typed create options (size excluded). */
export function createOptString(o: CreateOptions): string {
  const parts: string[] = [];
  if (o.compat !== undefined) parts.push(`compat=${o.compat}`);
  if (o.clusterSize !== undefined) parts.push(`cluster_size=${o.clusterSize}`);
  if (o.refcountBits !== undefined) parts.push(`refcount_bits=${o.refcountBits}`);
  if (o.lazyRefcounts !== undefined) parts.push(`lazy_refcounts=${onOff(o.lazyRefcounts)}`);
  if (o.extendedL2 !== undefined) parts.push(`extended_l2=${onOff(o.extendedL2)}`);
  if (o.compressionType !== undefined) parts.push(`compression_type=${o.compressionType}`);
  if (o.preallocation !== undefined) parts.push(`preallocation=${o.preallocation}`);
  if (o.backingFile !== undefined) parts.push(`backing_file=${o.backingFile}`);
  if (o.backingFormat !== undefined) parts.push(`backing_fmt=${o.backingFormat}`);
  if (o.dataFile !== undefined) parts.push(`data_file=${o.dataFile}`);
  if (o.dataFileRaw !== undefined) parts.push(`data_file_raw=${onOff(o.dataFileRaw)}`);
  return parts.join(',');
}

/** `qemu-img create` arguments; -u (do not open the backing file) whenever a backing file is named. */
export function qemuCreateArgs(o: CreateOptions, image: string): string[] {
  const opts = createOptString(o);
  return [
    'create', '-q', '-f', 'qcow2',
    ...(o.backingFile !== undefined ? ['-u'] : []),
    ...(opts !== '' ? ['-o', opts] : []),
    image, (o.size ?? 0n).toString(),
  ];
}

/** The `-o` text of qemu-img amend for an amend request. */
export function amendOptString(r: AmendRequest): string {
  const parts: string[] = [];
  if (r.compat !== undefined) parts.push(`compat=${r.compat}`);
  if (r.lazyRefcounts !== undefined) parts.push(`lazy_refcounts=${onOff(r.lazyRefcounts)}`);
  if (r.refcountBits !== undefined) parts.push(`refcount_bits=${r.refcountBits}`);
  if (r.size !== undefined) parts.push(`size=${r.size}`);
  if (r.dataFile !== undefined) parts.push(`data_file=${r.dataFile}`);
  if (r.dataFileRaw !== undefined) parts.push(`data_file_raw=${onOff(r.dataFileRaw)}`);
  if (r.backingFile !== undefined) parts.push(`backing_file=${r.backingFile}`);
  if (r.backingFormat !== undefined) parts.push(`backing_fmt=${r.backingFormat}`);
  return parts.join(',');
}

/** JSON.stringify that prints bigints (for test names). */
export function show(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? `${x}n` : x));
}
