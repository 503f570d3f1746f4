// Differential test of `amend`, `resize` and `rebase -u` against qemu-img 7.2.
//
// Per scenario: <root>/<n>/A and <root>/<n>/B are set up by the same qemu-img / qemu-io script
// (same relative names, same bytes: checked). qemu-img runs the operation in A; our CLI
// (dist/provider/cli/qcow2.js, its main() in-process with cwd = B) runs the same argv in B. Then:
//   - same exit status (0 vs non-0);
//   - refusals: the same message (ours says `qcow2: ` where qemu-img says `qemu-img: `); where ours
//     deliberately extends qemu's message with a way forward, the first line's prefix; and our
//     image is byte-identical to before (all or nothing);
//   - successes: `qemu-img info --output=json` equal (minus filename and actual-size), `map
//     --output=json` equal, `qemu-img check` clean on ours, `qemu-img compare` A vs B identical,
//     data file sizes equal; byte-identical images where qemu-img is deterministic and ours is
//     header-only. Every other scenario says, in `bytes`, why the bytes differ.

import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  checkOf, compareImages, firstDifference, infoOf, mapOf, md5, missingTools, openSpec, qemuImg,
  runOurs, shOk, skipReason, timings, type Run,
} from './amend-helpers';

// ------------------------------------------------------------------------------------------------
// Scenario vocabulary
// ------------------------------------------------------------------------------------------------

/** How a refusal message is compared. */
type Refusal =
  | 'full'        // whole stderr equal after `qcow2: ` -> `qemu-img: ` (warning lines aside)
  | 'extends'     // our first line starts with qemu-img's: ours adds a way forward
  | { common: string }  // both first lines start with this (qemu-img's cause is a bare errno)
  | { deliberate: string }; // both refuse, in different words (the reason is given)

interface Scenario {
  name: string;
  /** bash, run in A and in B before the operation (deterministic: checked). */
  setup: string;
  /** qemu-img argv; ours runs the same argv. */
  op: string[];
  /** true: our image must equal qemu-img's byte for byte. A string: why the bytes differ. */
  bytes: true | string;
  /** Set when both must refuse. */
  refusal?: Refusal;
  /** qemu-img applies part of the change before it refuses: A is not compared with B. */
  qemuPartial?: string;
  /** Why stderr of a success is not compared (else it must be equal). */
  stderrDiffers?: string;
  /** qemu-img succeeds, ours refuses on purpose (a documented limitation): why. */
  oursRefuses?: string;
}

// Why the bytes differ where ours is not header-only: we never update metadata in place (new
// L2 / L1 / refcount structures go to clusters the old image does not use and one header write
// commits them); qemu-img updates tables in place. Equal in info, map, check and content.
const MOVES = 'metadata changes: ours writes new tables to free clusters and commits with one header write; qemu-img updates in place';
const REBUILD = 'refcount rebuild: ours places the new refcount structures after the end of the old file, qemu-img after its own allocations';
const REPAIR = 'dirty image: both recount refcounts, ours writes new refcount structures (copy), qemu-img repairs in place';
const GROW_L1 = 'L1 growth: ours allocates the new L1 (and L2 tables) in free clusters first fit, qemu-img at the end of the file';
const SHRINK = 'shrink: ours writes new L2/L1 tables and refcounts and truncates after the commit; qemu-img discards in place';
const ZEROS = 'zero-cluster expansion: ours writes new L2 tables, qemu-img rewrites them in place';

const IMG = 'img.qcow2';
const mk = (opts: string, size: string, name = IMG) => `$QEMU_IMG create -q -f qcow2 ${opts ? `-o ${opts} ` : ''}${name} ${size}`;
const io = (...cmds: string[]) => `$QEMU_IO ${cmds.map((c) => `-c '${c}'`).join(' ')} ${IMG} >/dev/null`;
const and = (...steps: string[]) => steps.join(' && ');
const amend = (opts: string) => ['amend', '-o', opts, IMG];

/** Real content spread over 64 MiB: several L2 tables with small clusters, one with 64 KiB. */
const DATA64 = io('write -P 0x5a 0 1M', 'write -P 0xa5 3M 192k', 'write -P 0x3c 40M 64k', 'write -P 0x77 63M 1M');
/** Content on both sides of the 512 MiB L2 boundary (64 KiB clusters) and near the end of 1 GiB. */
const DATA1G = io('write -P 0x11 0 1M', 'write -P 0x22 300M 128k', 'write -P 0x33 511M 2M', 'write -P 0x44 700M 64k', 'write -P 0x55 1023M 1M');
const DATA16 = io('write -P 0x11 0 1M', 'write -P 0x22 7M 128k', 'write -P 0x33 15M 1M');
const DATA128 = io('write -P 0x11 0 1M', 'write -P 0x33 31M 2M', 'write -P 0x44 40M 64k', 'write -P 0x55 127M 1M');
/** Zero clusters: ZERO|offset (write -z over data), plain ZERO (write -z -u, and -z on unallocated). */
const ZERO_CLUSTERS = io('write -P 0x66 0 2M', 'write -z 0 256k', 'write -z -u 512k 128k', 'write -z 4M 64k', 'write -z -u 8M 192k');
/** Set the dirty bit (incompatible bit 0) by byte edit: refcounts stay right. */
const SET_DIRTY = `printf '\\001' | dd of=${IMG} bs=1 seek=79 conv=notrunc status=none`;
const QEMU_REPAIR_LOG = 'qemu-img repairs a dirty image when it opens it and lists every refcount it fixes on stderr';
/** A real crash with lazy refcounts: writes, then qemu-io kills itself (refcounts stale). */
const CRASH_LAZY = `(${io('write -P 0x12 0 1M', 'flush', 'write -P 0x34 4M 1M', 'sigraise 9')} 2>/dev/null || true)`;
/**
 * An internal snapshot, with its date and VM clock zeroed (snapshot table entry bytes 16..31)
 * so that the same setup gives the same bytes in A and B.
 */
const SNAPSHOT = `$QEMU_IMG snapshot -c snap1 ${IMG} && off=$(od -An -tu8 --endian=big -j64 -N8 ${IMG}) && ` +
  `dd if=/dev/zero of=${IMG} bs=1 seek=$((off + 16)) count=16 conv=notrunc status=none`;
const BASE = and(mk('', '64M', 'base.qcow2'), `$QEMU_IO -c 'write -P 0x42 0 8M' base.qcow2 >/dev/null`);
/** A backing file full of data, so that any part of it showing through is visible. */
const BASE64 = and(mk('', '64M', 'base.qcow2'), `$QEMU_IO -c 'write -P 0x42 0 64M' base.qcow2 >/dev/null`);
const OVERLAY = and(BASE, `$QEMU_IMG create -q -f qcow2 -b base.qcow2 -F qcow2 ${IMG} 64M`);
const OTHER_BASE = and(mk('', '64M', 'other.qcow2'), `truncate -s 64M base.raw`);
const DF = 'data_file=data.raw';
const DFR = 'data_file=data.raw,data_file_raw=on';

/**
 * Width pairs (from, to, cluster size). Narrow sources use small clusters: qemu-img's rebuild
 * walks every entry of a refblock, and a 1-bit refblock of a 64 KiB cluster has 512 Ki entries
 * (about 10 s in qemu-img for one image; 16-bit ones about 0.5 s).
 */
const WIDTHS: Array<[number, number, string]> = [
  [16, 1, '64k'], [16, 2, '8k'], [16, 4, '8k'], [16, 8, '4k'], [16, 32, '8k'], [16, 64, '64k'],
  [1, 64, '4k'], [64, 1, '64k'], [2, 32, '4k'], [32, 2, '16k'], [8, 4, '16k'], [4, 16, '8k'],
  [64, 16, '64k'], [1, 2, '4k'], [32, 8, '16k'], [2, 1, '4k'], [8, 64, '16k'], [64, 32, '4k'],
];

const SCENARIOS: Scenario[] = [
  // --- compat up / down ------------------------------------------------------------------------
  { name: 'compat up: empty v2', setup: mk('compat=0.10', '64M'), op: amend('compat=1.1'), bytes: true },
  { name: 'compat up: v2 with data', setup: and(mk('compat=0.10', '64M'), DATA64), op: amend('compat=1.1'), bytes: true },
  { name: 'compat up: v3 already (no-op)', setup: and(mk('', '64M'), DATA64), op: amend('compat=1.1'), bytes: true },
  { name: 'compat up: v2 overlay on a backing file', setup: and(BASE, `$QEMU_IMG create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 ${IMG} 64M`, DATA64), op: amend('compat=v3'), bytes: true },
  { name: 'compat down: empty v3', setup: mk('', '64M'), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down: v3 with data, no zero clusters', setup: and(mk('', '64M'), DATA64), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down: lazy_refcounts=on image, no zero clusters', setup: and(mk('lazy_refcounts=on', '64M'), DATA64), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down: zero clusters, no backing file', setup: and(mk('', '64M'), ZERO_CLUSTERS), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down: zero clusters over a backing file', setup: and(OVERLAY, ZERO_CLUSTERS), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down: only plain zero clusters (write -z -u), backing file', setup: and(OVERLAY, io('write -z -u 0 1M', 'write -z 2M 64k')), op: amend('compat=v2'), bytes: true },
  { name: 'compat down: only allocated zero clusters, no backing', setup: and(mk('', '64M'), io('write -P 1 0 1M', 'write -z 0 1M')), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down: zero clusters, 512 B clusters', setup: and(mk('cluster_size=512', '8M'), ZERO_CLUSTERS.replace(/8M 192k/, '7M 192k')), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down with refcount_bits=16 on an 8-bit image', setup: and(mk('refcount_bits=8,cluster_size=16k', '64M'), DATA64), op: amend('compat=0.10,refcount_bits=16'), bytes: REBUILD },
  { name: 'compat down: zstd image without compressed clusters', setup: and(mk('compression_type=zstd', '64M'), DATA64), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down: same-size internal snapshot', setup: and(mk('', '64M'), DATA64, SNAPSHOT), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down: same-size snapshot, zero clusters in active and snapshot tables', setup: and(mk('', '64M'), ZERO_CLUSTERS, SNAPSHOT, io('write -z 12M 64k', 'write -P 0x19 16M 64k', 'write -z 16M 64k')), op: amend('compat=0.10'),
    bytes: 'qemu-img marks COPIED the expanded clusters that the snapshot\'s table and the active copy share (refcount 2), which its own check reports as corruption; ours leaves the flag off' },
  { name: 'compat down: snapshot over a backing file, plain zero clusters in a shared L2 table and in copies (new clusters refcount 2 and 1)', setup: and(OVERLAY, io('write -z -u 0 256k', 'write -P 0x21 1M 64k'), SNAPSHOT, io('write -z -u 2M 128k', 'write -P 0x22 0 64k')), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down: 512 B clusters over a backing file, expansion needs new refcount blocks', setup: and(BASE, `$QEMU_IMG create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 ${IMG} 64M`, io('write -z -u 0 512k', 'write -P 0x31 1M 4k'), SNAPSHOT, io('write -z -u 2M 256k')), op: amend('compat=0.10'), bytes: true },
  { name: 'compat down refused: snapshot of another size', setup: and(mk('', '32M'), DATA64.replace(/ -c 'write -P 0x3c 40M 64k' -c 'write -P 0x77 63M 1M'/, ''), SNAPSHOT, `$QEMU_IMG resize -q ${IMG} 64M`), op: amend('compat=0.10'), bytes: true,
    refusal: 'extends' },
  { name: 'compat down refused: a zero cluster sharing its data cluster with a snapshot', setup: and(mk('', '64M'), DATA64, SNAPSHOT, io('write -z 0 64k')), op: amend('compat=0.10'), bytes: true,
    oursRefuses: 'qemu-img writes zeros into the data cluster the snapshot still reads (and marks it COPIED at refcount 2, which check reports as corruption)' },
  { name: 'compat down refused: refcount_bits=8', setup: mk('refcount_bits=8', '64M'), op: amend('compat=0.10'), bytes: true, refusal: 'full' },
  { name: 'compat down refused: data file', setup: mk(DF, '64M'), op: amend('compat=0.10'), bytes: true, refusal: 'full' },
  { name: 'compat down refused: extended L2', setup: mk('extended_l2=on', '64M'), op: amend('compat=0.10'), bytes: true, refusal: 'full' },
  { name: 'compat down refused: zstd with compressed clusters', setup: and(mk('compression_type=zstd', '64M'), io('write -c -P 1 0 64k')), op: amend('compat=0.10'), bytes: true, refusal: 'full' },
  { name: 'compat refused: unknown level', setup: mk('', '64M'), op: amend('compat=0.9'), bytes: true, refusal: 'full' },

  // --- lazy refcounts ---------------------------------------------------------------------------
  { name: 'lazy_refcounts=on: empty', setup: mk('', '64M'), op: amend('lazy_refcounts=on'), bytes: true },
  { name: 'lazy_refcounts=on: with data', setup: and(mk('', '64M'), DATA64), op: amend('lazy_refcounts=on'), bytes: true },
  { name: 'lazy_refcounts=off: with data', setup: and(mk('lazy_refcounts=on', '64M'), DATA64), op: amend('lazy_refcounts=off'), bytes: true },
  { name: 'lazy_refcounts=on: already on (no-op)', setup: mk('lazy_refcounts=on', '64M'), op: amend('lazy_refcounts=on'), bytes: true },
  { name: 'lazy_refcounts=off: dirty image after a crash (stale refcounts)', setup: and(mk('lazy_refcounts=on', '64M'), CRASH_LAZY), op: amend('lazy_refcounts=off'), bytes: REPAIR, stderrDiffers: QEMU_REPAIR_LOG },
  { name: 'lazy_refcounts=on: dirty image after a crash (stale refcounts)', setup: and(mk('lazy_refcounts=on', '64M'), CRASH_LAZY), op: amend('lazy_refcounts=on'), bytes: REPAIR, stderrDiffers: QEMU_REPAIR_LOG },
  { name: 'lazy_refcounts=off: dirty bit set by byte edit', setup: and(mk('lazy_refcounts=on', '64M'), DATA64, SET_DIRTY), op: amend('lazy_refcounts=off'), bytes: REPAIR },
  { name: 'refcount_bits=64 on a crashed lazy image', setup: and(mk('lazy_refcounts=on,cluster_size=16k', '64M'), CRASH_LAZY), op: amend('refcount_bits=64'), bytes: REBUILD, stderrDiffers: QEMU_REPAIR_LOG },
  { name: 'lazy_refcounts refused on v2', setup: mk('compat=0.10', '64M'), op: amend('lazy_refcounts=on'), bytes: true, refusal: 'full' },
  { name: 'compat=1.1,lazy_refcounts=on on v2', setup: and(mk('compat=0.10', '64M'), DATA64), op: amend('compat=1.1,lazy_refcounts=on'), bytes: true },

  // --- refcount widths --------------------------------------------------------------------------
  ...WIDTHS.map(([from, to, cluster]): Scenario => ({
    name: `refcount_bits ${from} -> ${to} with data (${cluster} clusters)`,
    setup: and(mk(`refcount_bits=${from},cluster_size=${cluster}`, '64M'), DATA64),
    op: amend(`refcount_bits=${to}`),
    bytes: REBUILD,
  })),
  { name: 'refcount_bits 16 -> 16 (no-op)', setup: and(mk('', '64M'), DATA64), op: amend('refcount_bits=16'), bytes: true },
  { name: 'refcount_bits 16 -> 64, 512 B clusters (many refblocks)', setup: and(mk('cluster_size=512', '64M'), DATA64), op: amend('refcount_bits=64'), bytes: REBUILD },
  { name: 'refcount_bits 16 -> 1, 4 KiB clusters', setup: and(mk('cluster_size=4096', '64M'), DATA64), op: amend('refcount_bits=1'), bytes: REBUILD },
  { name: 'refcount_bits 16 -> 64 on a snapshot image (refcount 2)', setup: and(mk('cluster_size=16k', '64M'), DATA64, SNAPSHOT), op: amend('refcount_bits=64'), bytes: REBUILD },
  { name: 'refcount_bits 16 -> 2 on a snapshot image (refcount 2 fits)', setup: and(mk('cluster_size=16k', '64M'), DATA64, SNAPSHOT), op: amend('refcount_bits=2'), bytes: REBUILD },
  { name: 'refcount_bits=1 refused: snapshot, refcount 2 (via a 2-bit image)', setup: and(mk('refcount_bits=2', '64M'), DATA64, SNAPSHOT), op: amend('refcount_bits=1'), bytes: true, refusal: 'full' },
  { name: 'refcount_bits=1 refused: snapshot, refcount 2 (16-bit image)', setup: and(mk('', '64M'), DATA64, SNAPSHOT), op: amend('refcount_bits=1'), bytes: true, refusal: 'full' },
  { name: 'refcount_bits refused: not a power of two', setup: mk('', '64M'), op: amend('refcount_bits=3'), bytes: true, refusal: 'full' },
  { name: 'refcount_bits refused: 128', setup: mk('', '64M'), op: amend('refcount_bits=128'), bytes: true, refusal: 'full' },
  { name: 'refcount_bits=8 refused on v2', setup: mk('compat=0.10', '64M'), op: amend('refcount_bits=8'), bytes: true, refusal: 'full' },
  { name: 'compat=1.1,refcount_bits=8 on v2 with data', setup: and(mk('compat=0.10,cluster_size=16k', '64M'), DATA64), op: amend('compat=1.1,refcount_bits=8'), bytes: REBUILD },

  // --- size -------------------------------------------------------------------------------------
  { name: 'grow within the L1: 64M -> 128M', setup: and(mk('', '64M'), DATA64), op: amend('size=128M'), bytes: true },
  { name: 'grow crossing an L1 growth: 64M -> 1G', setup: and(mk('', '64M'), DATA64), op: amend('size=1G'), bytes: GROW_L1 },
  { name: 'resize grow +3G (L1 1 -> 7 entries)', setup: and(mk('', '1G'), DATA1G), op: ['resize', IMG, '+3G'], bytes: true },
  { name: 'grow to a size not a multiple of the cluster size', setup: and(mk('', '64M'), DATA64), op: amend('size=1073742336'), bytes: GROW_L1 },
  { name: 'grow an empty image from 0', setup: mk('', '0'), op: amend('size=1G'), bytes: GROW_L1 },
  { name: 'grow 512 B clusters 1M -> 64M (L1 grows to many clusters)', setup: and(mk('cluster_size=512', '1M'), io('write -P 9 0 1M')), op: amend('size=64M'), bytes: GROW_L1 },
  { name: 'shrink 1G -> 600M crossing L2 tables (amend needs no --shrink)', setup: and(mk('', '1G'), DATA1G), op: amend('size=600M'), bytes: SHRINK },
  { name: 'shrink 1G -> 300M+512 (not cluster aligned), drops an L2 table', setup: and(mk('', '1G'), DATA1G), op: amend('size=314573312'), bytes: SHRINK },
  { name: 'resize --shrink 1G -> 100M', setup: and(mk('', '1G'), DATA1G), op: ['resize', '--shrink', IMG, '100M'], bytes: true },
  { name: 'resize --shrink -512M', setup: and(mk('', '1G'), DATA1G), op: ['resize', '--shrink', IMG, '--', '-512M'], bytes: true },
  // qemu-img amend ignores size=0 (`if (new_size)` in qcow2_amend_options): a no-op, exit 0.
  { name: 'amend -o size=0 is a no-op in qemu-img', setup: and(mk('', '64M'), DATA64), op: amend('size=0'), bytes: true },
  { name: 'resize --shrink to 0 refused (qemu-img: size must be positive)', setup: and(mk('', '64M'), DATA64), op: ['resize', '--shrink', IMG, '0'], bytes: true, refusal: 'full' },
  { name: 'resize --shrink to 512', setup: and(mk('', '64M'), DATA64), op: ['resize', '--shrink', IMG, '512'], bytes: true },
  { name: 'shrink 512 B clusters 8M -> 3M+512', setup: and(mk('cluster_size=512', '8M'), io('write -P 7 0 8M')), op: amend('size=3146240'), bytes: SHRINK },
  { name: 'shrink refused: resize without --shrink', setup: mk('', '64M'), op: ['resize', IMG, '32M'], bytes: true, refusal: 'full' },
  { name: 'size refused: not a multiple of 512', setup: mk('', '64M'), op: amend('size=1000'), bytes: true, refusal: 'full' },
  { name: 'preallocation=metadata: grow 256M -> 1G', setup: mk('preallocation=metadata', '256M'), op: amend('size=1G'), bytes: GROW_L1 },
  { name: 'preallocation=metadata: shrink 320M -> 100M+4K', setup: and(mk('preallocation=metadata', '320M'), io('write -P 0x21 0 1M', 'write -P 0x22 99M 2M')), op: amend('size=104861696'), bytes: SHRINK },
  { name: 'preallocation=metadata, 4 KiB clusters: shrink 64M -> 10M+512 across many L2 tables', setup: and(mk('preallocation=metadata,cluster_size=4096', '64M'), io('write -P 0x31 9M 2M')), op: amend('size=10486272'), bytes: SHRINK },
  { name: 'preallocation=metadata: resize --shrink 320M -> 250M', setup: mk('preallocation=metadata', '320M'), op: ['resize', '--shrink', IMG, '250M'], bytes: true },
  { name: 'data file: grow 64M -> 1G', setup: and(mk(DF, '64M'), DATA64), op: amend('size=1G'), bytes: GROW_L1 },
  { name: 'data file: shrink 1G -> 300M', setup: and(mk(DF, '1G'), DATA1G), op: amend('size=300M'), bytes: SHRINK },
  { name: 'data file: grow within the L1 64M -> 100M+512', setup: and(mk(DF, '64M'), DATA64), op: amend('size=104858112'), bytes: true },
  // data-file-raw images read as data everywhere, so qemu-img compare reads every byte: sizes
  // stay small (4 KiB / 8 KiB clusters make L1 growth and L2 boundaries happen at a few MiB).
  { name: 'data-file-raw: grow 64M -> 512M+512 (L1 1 -> 2 entries, preallocated)', setup: and(mk(DFR, '64M'), DATA64), op: amend('size=536871424'), bytes: GROW_L1 },
  { name: 'data-file-raw: grow within the L2 64M -> 100M', setup: and(mk(DFR, '64M'), DATA64), op: amend('size=100M'), bytes: MOVES },
  { name: 'data-file-raw, 4 KiB clusters: resize +40M (L1 8 -> 28 entries)', setup: and(mk(`${DFR},cluster_size=4096`, '16M'), DATA16), op: ['resize', IMG, '+40M'], bytes: GROW_L1 },
  { name: 'data-file-raw, 4 KiB clusters: shrink 64M -> 20M+512 across L2 tables', setup: and(mk(`${DFR},cluster_size=4096`, '64M'), DATA64), op: amend('size=20972032'), bytes: SHRINK },
  { name: 'data-file-raw, 16 KiB clusters: resize --shrink 128M -> 40M+512 (L1 4 -> 2 entries)', setup: and(mk(`${DFR},cluster_size=16k`, '128M'), DATA128), op: ['resize', '--shrink', IMG, '41943552'], bytes: true },
  // Growing over a longer backing file: the new area must read as zeros (QEMU's truncate writes
  // ZERO entries), not show the backing file's data.
  { name: 'overlay over a longer backing file: resize 32M -> 48M (new area zeroed)', setup: and(BASE64, `$QEMU_IMG create -q -f qcow2 -b base.qcow2 -F qcow2 ${IMG} 32M`, io('write -P 0x21 1M 64k')), op: ['resize', IMG, '48M'], bytes: true },
  { name: 'overlay over a longer backing file: amend size 32M -> 1G (L1 growth, zeroed to 64M)', setup: and(BASE64, `$QEMU_IMG create -q -f qcow2 -b base.qcow2 -F qcow2 ${IMG} 32M`), op: amend('size=1G'), bytes: GROW_L1 },
  // resize in qemu-img's layout (ops/resize.ts), byte for byte.
  { name: 'resize --shrink, internal snapshot: shared L2 table copied', setup: and(mk('', '1G'), DATA1G, SNAPSHOT), op: ['resize', '--shrink', IMG, '600M'], bytes: true },
  { name: 'resize grow +3G, internal snapshot', setup: and(mk('', '1G'), DATA1G, SNAPSHOT), op: ['resize', IMG, '+3G'], bytes: true },
  { name: 'resize --shrink, 512 B clusters: refcount blocks dropped, file truncated', setup: and(mk('cluster_size=512', '16M'), io('write -P 7 0 12M')), op: ['resize', '--shrink', IMG, '1M'], bytes: true },
  { name: 'resize --shrink, refcount_bits=1', setup: and(mk('refcount_bits=1,cluster_size=4k', '64M'), io('write -P 7 0 40M')), op: ['resize', '--shrink', IMG, '1M'], bytes: true },
  { name: 'resize grow, 512 B clusters: L1 1 -> many clusters', setup: and(mk('cluster_size=512', '1M'), io('write -P 9 0 1M')), op: ['resize', IMG, '64M'], bytes: true },
  { name: 'resize grow from 0', setup: mk('', '0'), op: ['resize', IMG, '1G'], bytes: true },
  { name: 'resize grow over a longer backing file: L1 growth, ZERO tables (4 KiB clusters)', setup: and(BASE64, `$QEMU_IMG create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 ${IMG} 3M`, io('write -P 0x21 1M 64k')), op: ['resize', IMG, '40M'], bytes: true },
  { name: 'resize --shrink then grow over a backing file, extended L2 (271)', setup: and(`$QEMU_IMG create -q -f raw base.raw 1M`, `$QEMU_IMG create -q -f qcow2 -o extended_l2=on -F raw -b base.raw ${IMG} 1M`, io('write -q 0 128k', 'discard -q 0 128k'), `$QEMU_IMG resize -q --shrink ${IMG} 64k`), op: ['resize', IMG, '1M'], bytes: true },
  { name: 'data file: resize --shrink 1G -> 300M (the data file punched and truncated)', setup: and(mk(DF, '1G'), DATA1G), op: ['resize', '--shrink', IMG, '300M'], bytes: true },
  { name: 'data file: resize grow 64M -> 1G', setup: and(mk(DF, '64M'), DATA64), op: ['resize', IMG, '1G'], bytes: true },
  { name: 'overlay over a shorter backing file: grow 32M -> 128M', setup: and(BASE64, `$QEMU_IMG create -q -f qcow2 -b base.qcow2 -F qcow2 ${IMG} 32M`, `$QEMU_IMG resize -q --shrink base.qcow2 16M`), op: ['resize', IMG, '128M'], bytes: true },
  {
    name: 'v2 overlay over a longer backing file: grow refused',
    setup: and(BASE64, `$QEMU_IMG create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 ${IMG} 32M`),
    op: ['resize', IMG, '48M'],
    bytes: true,
    refusal: { deliberate: 'qemu-img: "Failed to zero out new clusters: Operation not supported"; ours says why and how to proceed' },
  },
  {
    name: 'overlay over a longer backing file, old end inside a cluster: qemu-img grows, ours refuses',
    setup: and(BASE64, `$QEMU_IMG create -q -f qcow2 -b base.qcow2 -F qcow2 ${IMG} 33554944`),
    op: amend('size=48M'),
    bytes: true,
    oursRefuses: 'the native engine does not write the zeroed tail of a partial cluster; it points to the qemu-img engine',
  },
  { name: 'snapshot image: grow 64M -> 1G', setup: and(mk('', '64M'), DATA64, SNAPSHOT), op: amend('size=1G'), bytes: GROW_L1 },
  { name: 'snapshot image: shrink 64M -> 32M (inside a shared L2 table)', setup: and(mk('', '64M'), DATA64, SNAPSHOT), op: amend('size=32M'), bytes: SHRINK },
  { name: 'snapshot image: shrink 1G -> 300M (drops a shared L2 table)', setup: and(mk('', '1G'), DATA1G, SNAPSHOT), op: amend('size=300M'), bytes: SHRINK },

  // --- data file name and data-file-raw ---------------------------------------------------------
  { name: 'data_file rename', setup: and(mk(DF, '64M'), DATA64, 'cp --sparse=always data.raw moved.raw'), op: amend('data_file=moved.raw'), bytes: true },
  { name: 'data_file rename on a data-file-raw image', setup: and(mk(DFR, '64M'), DATA64, 'cp --sparse=always data.raw moved.raw'), op: amend('data_file=moved.raw'), bytes: true },
  { name: 'data_file_raw=off', setup: and(mk(DFR, '64M'), DATA64), op: amend('data_file_raw=off'), bytes: true },
  { name: 'data_file_raw=on when already on (no-op)', setup: mk(DFR, '64M'), op: amend('data_file_raw=on'), bytes: true },
  { name: 'data_file rename and data_file_raw=off', setup: and(mk(DFR, '64M'), DATA64, 'cp --sparse=always data.raw moved.raw'), op: amend('data_file=moved.raw,data_file_raw=off'), bytes: true },
  { name: 'data_file_raw=on refused on a non-raw image', setup: mk(DF, '64M'), op: amend('data_file_raw=on'), bytes: true, refusal: 'extends' },
  { name: 'data_file refused without an external data file', setup: mk('', '64M'), op: amend('data_file=x.raw'), bytes: true, refusal: 'full' },

  // --- backing file: amend (refused), rebase -u -------------------------------------------------
  { name: 'backing_file via amend refused', setup: and(mk('', '64M'), DATA64), op: amend('backing_file=base.qcow2'), bytes: true, refusal: 'full' },
  { name: 'backing_file via amend refused: another name', setup: OVERLAY, op: amend('backing_file=other.qcow2'), bytes: true, refusal: 'full' },
  { name: 'backing_fmt via amend refused: another format', setup: OVERLAY, op: amend('backing_fmt=raw'), bytes: true, refusal: 'full' },
  { name: 'backing_file and backing_fmt via amend, both unchanged: accepted', setup: and(OVERLAY, DATA64), op: amend('backing_file=base.qcow2,backing_fmt=qcow2,lazy_refcounts=on'), bytes: true },
  // qemu-img compares the backing file AND format with the image's: an option not given is NULL,
  // so naming only the unchanged file (the image has a format) is a change, and refused.
  { name: 'backing_file via amend refused: unchanged name, format not given', setup: and(OVERLAY, DATA64), op: amend('backing_file=base.qcow2,lazy_refcounts=on'), bytes: true, refusal: 'full' },
  { name: 'backing_fmt via amend refused: unchanged format, file not given', setup: OVERLAY, op: amend('backing_fmt=qcow2'), bytes: true, refusal: 'full' },
  { name: 'rebase -u: plain image gets a backing file', setup: and(BASE, mk('', '64M'), DATA64), op: ['rebase', '-u', '-b', 'base.qcow2', '-F', 'qcow2', IMG], bytes: true },
  { name: 'rebase -u: overlay to another backing file', setup: and(OVERLAY, OTHER_BASE, DATA64), op: ['rebase', '-u', '-b', 'other.qcow2', '-F', 'qcow2', IMG], bytes: true },
  { name: 'rebase -u: overlay to a raw backing file', setup: and(OVERLAY, OTHER_BASE), op: ['rebase', '-u', '-b', 'base.raw', '-F', 'raw', IMG], bytes: true },
  { name: 'rebase -u -b "": drop the backing file', setup: and(OVERLAY, DATA64), op: ['rebase', '-u', '-b', '', IMG], bytes: true },
  { name: 'rebase -u: v2 image', setup: and(BASE, mk('compat=0.10', '64M'), DATA64), op: ['rebase', '-u', '-b', 'base.qcow2', '-F', 'qcow2', IMG], bytes: true },
  { name: 'rebase -u: data file image (not raw)', setup: and(BASE, mk(DF, '64M')), op: ['rebase', '-u', '-b', 'base.qcow2', '-F', 'qcow2', IMG], bytes: true },
  { name: 'rebase -u refused: data-file-raw image', setup: and(BASE, mk(DFR, '64M')), op: ['rebase', '-u', '-b', 'base.qcow2', '-F', 'qcow2', IMG], bytes: true, refusal: { common: "Could not change the backing file to 'base.qcow2': " } },

  // --- several options at once ------------------------------------------------------------------
  {
    name: 'non-atomic in qemu-img: compat=1.1,refcount_bits=8,backing_file=x on v2',
    setup: and(mk('compat=0.10,cluster_size=16k', '64M'), DATA64),
    op: amend('compat=1.1,refcount_bits=8,backing_file=x'),
    bytes: true,
    refusal: 'full',
    qemuPartial: 'qemu-img upgrades to v3 and rebuilds refcounts at 8 bits, then refuses the backing file',
  },
  { name: 'compat=1.1,lazy_refcounts=on,refcount_bits=64,size=1G on v2 with data', setup: and(mk('compat=0.10,cluster_size=16k', '64M'), DATA64), op: amend('compat=1.1,lazy_refcounts=on,refcount_bits=64,size=1G'), bytes: REBUILD },
  { name: 'refcount_bits=64,size=100M on data-file-raw (8 KiB clusters)', setup: and(mk(`${DFR},cluster_size=8192`, '16M'), DATA16), op: amend('refcount_bits=64,size=100M'), bytes: REBUILD },
  { name: 'refcount_bits=4,size=300M (shrink) with data', setup: and(mk('cluster_size=16k', '1G'), DATA1G), op: amend('refcount_bits=4,size=300M'), bytes: REBUILD },
  { name: 'compat=0.10,size=128M on a zero-cluster image', setup: and(mk('', '64M'), ZERO_CLUSTERS), op: amend('compat=0.10,size=128M'), bytes: ZEROS },
  { name: 'lazy_refcounts=on,data_file_raw=off,size=80M on data-file-raw (8 KiB clusters)', setup: and(mk(`${DFR},cluster_size=8192`, '16M'), DATA16), op: amend('lazy_refcounts=on,data_file_raw=off,size=80M'), bytes: GROW_L1 },
  {
    name: 'non-atomic in qemu-img: refcount_bits=64,size=1000',
    setup: and(mk('cluster_size=16k', '64M'), DATA64),
    op: amend('refcount_bits=64,size=1000'),
    bytes: true,
    refusal: 'full',
    qemuPartial: 'qemu-img rebuilds refcounts at 64 bits, then refuses the size',
  },
  { name: 'refused as a whole: lazy_refcounts=on,data_file=x on a plain image', setup: mk('', '64M'), op: amend('lazy_refcounts=on,data_file=x'), bytes: true, refusal: 'full' },
  { name: 'create-only option refused: cluster_size', setup: mk('', '64M'), op: amend('cluster_size=4096'), bytes: true, refusal: 'full' },
  { name: 'create-only option refused: preallocation', setup: mk('', '64M'), op: amend('preallocation=metadata'), bytes: true, refusal: 'full' },
];

// ------------------------------------------------------------------------------------------------

const SKIP = skipReason('amend/differential');
let root = '';
let counter = 0;

/** Text of a run for failure messages. */
const clip = (t: string, lines = 6) => {
  const l = t.trim().split('\n');
  return l.length > lines ? [...l.slice(0, lines), `... (${l.length - lines} more lines)`].join('\n') : l.join('\n');
};
const withoutWarnings = (t: string) => t.split('\n').filter((l) => !l.startsWith('warning: ')).join('\n');
const show = (who: string, r: Run) => `${who}: exit ${r.status}\n  stderr: ${clip(r.stderr)}\n  stdout: ${clip(r.stdout)}`;

describe.skipIf(SKIP !== '')(`amend differential vs qemu-img 7.2${SKIP ? ` (SKIPPED: ${SKIP})` : ''}`, () => {
  beforeAll(() => {
    const missing = missingTools();
    if (missing.length) throw new Error(missing.join('\n'));
    root = mkdtempSync(join(tmpdir(), 'qcow2-amend-diff-'));
  });
  afterAll(() => {
    if (process.env.AMEND_TIMING) console.log([...timings].map(([k, v]) => `${k}: ${v.toFixed(1)} s`).join('\n'));
    if (root && !process.env.KEEP_AMEND_TMP) rmSync(root, { recursive: true, force: true });
  });

  it('has at least 60 scenarios', () => {
    expect(SCENARIOS.length).toBeGreaterThanOrEqual(60);
    expect(new Set(SCENARIOS.map((s) => s.name)).size).toBe(SCENARIOS.length);
  });

  for (const sc of SCENARIOS) {
    it(sc.name, async () => {
      const dir = join(root, String(++counter).padStart(3, '0'));
      const A = join(dir, 'A');
      const B = join(dir, 'B');
      mkdirSync(A, { recursive: true });
      mkdirSync(B, { recursive: true });
      // The same setup in both folders, in parallel (not a copy: cp drops the data file's first
      // block, which qemu-img create allocates, and qemu-img map's zero flag depends on it).
      writeFileSync(join(dir, 'setup.sh'), `set -e\n${sc.setup}\n`);
      shOk('(cd A && bash ../setup.sh) & a=$!; (cd B && bash ../setup.sh) & b=$!; wait $a || exit 1; wait $b', dir);
      expect(firstDifference(join(A, IMG), join(B, IMG), 16 << 20), 'setup must be deterministic').toBeUndefined();
      const before = sc.refusal || sc.oursRefuses ? md5(join(B, IMG)) : '';
      const infoBefore = sc.refusal ? infoOf(B).norm : undefined;

      const q = qemuImg(sc.op, A);
      const o = await runOurs(sc.op, B);
      const ctx = `${sc.op.join(' ')}\n${show('qemu-img', q)}\n${show('qcow2', o)}`;

      if (sc.refusal) {
        expect(q.status, `qemu-img was expected to refuse\n${ctx}`).not.toBe(0);
        expect(o.status, `ours must refuse as qemu-img does\n${ctx}`).not.toBe(0);
        // Warning lines (resize's shrink warning) are compared by their own test below.
        const qs = withoutWarnings(q.stderr.replace(/^qemu-img: /gm, ''));
        const os = withoutWarnings(o.stderr.replace(/^qcow2: /gm, ''));
        const first = (t: string) => t.split('\n')[0]!;
        if (sc.refusal === 'full') expect(os, ctx).toBe(qs);
        else if (sc.refusal === 'extends') expect(first(os).startsWith(first(qs)), ctx).toBe(true);
        else if ('deliberate' in sc.refusal) expect(os.length, ctx).toBeGreaterThan(0);
        else {
          expect(first(qs).startsWith(sc.refusal.common), ctx).toBe(true);
          expect(first(os).startsWith(sc.refusal.common), ctx).toBe(true);
        }
        // All or nothing: the refused image is untouched, byte for byte.
        expect(md5(join(B, IMG)), 'our refused amend changed the image').toBe(before);
        if (sc.qemuPartial) {
          // Documents qemu-img's non-atomicity: its image did change before the refusal.
          expect(infoOf(A).norm, `expected qemu-img to have partly applied: ${sc.qemuPartial}`).not.toEqual(infoBefore);
        } else {
          expect(infoOf(B).norm).toEqual(infoOf(A).norm);
        }
        return;
      }

      expect(q.status, `qemu-img was expected to succeed\n${ctx}`).toBe(0);
      if (sc.oursRefuses) {
        // A documented limitation: ours refuses, says why, and leaves the image as it was.
        expect(o.status, `ours refuses on purpose (${sc.oursRefuses})\n${ctx}`).not.toBe(0);
        expect(o.stderr, ctx).toMatch(/^qcow2: /);
        expect(md5(join(B, IMG)), 'our refused amend changed the image').toBe(before);
        return;
      }
      expect(o.status, `ours must succeed as qemu-img does\n${ctx}`).toBe(0);
      expect(o.stdout, 'stdout').toBe(q.stdout);
      if (!sc.op.includes('--shrink') && !sc.stderrDiffers) expect(o.stderr.replace(/^qcow2: /gm, 'qemu-img: '), 'stderr').toBe(q.stderr);

      const infoA = infoOf(A);
      const infoB = infoOf(B);
      expect(infoB.norm, 'qemu-img info --output=json').toEqual(infoA.norm);

      const check = checkOf(B);
      expect(check.status, `qemu-img check on ours must be clean\n${check.stdout}${check.stderr}`).toBe(0);

      const mapA = mapOf(A);
      const mapB = mapOf(B);
      expect(mapA.status, `qemu-img map on qemu's image\n${mapA.stderr}`).toBe(0);
      expect(mapB.status, `qemu-img map on ours\n${mapB.stderr}`).toBe(0);
      expect(mapB.json, 'qemu-img map --output=json').toEqual(mapA.json);

      const cmp = compareImages(openSpec(A, infoA.dataFile), openSpec(B, infoB.dataFile));
      expect(cmp.status, `qemu-img compare A B\n${cmp.stdout}${cmp.stderr}`).toBe(0);
      expect(cmp.stdout).toContain('Images are identical.');

      expect(infoB.dataFile).toBe(infoA.dataFile);
      if (infoA.dataFile !== undefined) {
        const df = infoA.dataFile;
        expect(statSync(join(B, df)).size, `data file ${df} size`).toBe(statSync(join(A, df)).size);
      }

      const diff = firstDifference(join(A, IMG), join(B, IMG));
      if (sc.bytes === true) {
        expect(diff, `expected byte-identical images (header-only change); first difference at 0x${diff?.toString(16)}`).toBeUndefined();
      } else {
        // Bytes may differ, for the reason given in sc.bytes (documented, not asserted).
        expect(sc.bytes.length).toBeGreaterThan(0);
      }
    });
  }

  // qemu-img resize prints its shrink warning only when it refuses for want of --shrink (after
  // the error); a successful `resize --shrink` prints nothing on stderr.
  it('resize: the shrink warning is printed exactly when qemu-img prints it', async () => {
    const dir = join(root, 'warning');
    for (const d of ['A', 'B']) {
      mkdirSync(join(dir, d), { recursive: true });
      shOk(mk('', '64M'), join(dir, d));
    }
    const cases = [['resize', '--shrink', IMG, '32M'], ['resize', IMG, '16M'], ['resize', '--shrink', IMG, '+1M']];
    for (const op of cases) {
      const q = qemuImg(op, join(dir, 'A'));
      const o = await runOurs(op, join(dir, 'B'));
      const ctx = `${op.join(' ')}\n${show('qemu-img', q)}\n${show('qcow2', o)}`;
      expect(o.status === 0, ctx).toBe(q.status === 0);
      expect(o.stderr.replace(/^qcow2: /gm, 'qemu-img: '), ctx).toBe(q.stderr);
    }
  });
});
