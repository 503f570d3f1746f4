// Facts the rules ask for, read from the files on the engine's host (this machine, or a remote
// host through its HostFs): shared by both engines so that they refuse with the same words (the
// qemu-img engine reads only headers here, never guest data).

import { Qcow2Error } from '../model/errors';
import { HostFs, HostStat, localFs } from '../qcow2/io/hostfs';
import { probeBacking } from '../qcow2/ops/create';
import type { CreateOptions } from '../model/options';
import type { CreateFacts } from '../rules/create';
import type { ConsistencyFacts } from '../rules/types';
import { Image } from '../qcow2/meta/image';
import { consistencyOf } from '../qcow2/ops/check';
import { AmendProgressChange, amendProgressFigures } from '../qcow2/ops/amend-progress';
import { firstSharedZeroCluster } from '../qcow2/ops/downgrade';

function statRegular(name: string, host: HostFs): HostStat {
  const st = host.stat(name);
  if (st === undefined) throw new Qcow2Error('NOT_FOUND', `Could not open '${name}': No such file or directory`, { file: name });
  if (st.kind !== 'file') throw new Qcow2Error('INVALID_OPTION', `Data file '${name}' is not a regular file`, { property: 'data_file', file: name });
  return st;
}

/** What a create of `imagePath` with `options` needs to know about the files around it. */
export function createFacts(imagePath: string, options: CreateOptions, host: HostFs = localFs): CreateFacts {
  return {
    backing: () => probeBacking(imagePath, options.backingFile!, options.backingFormat, host),
    adoptedDataFileSize: () => BigInt(statRegular(options.dataFile!, host).size),
    adoptedDataFileExists: () => options.dataFile !== undefined && host.stat(options.dataFile) !== undefined,
  };
}

/** Two names for the same file (an import must never write its own source). */
export function sameFile(a: string, b: string, host: HostFs = localFs): boolean {
  const sa = host.stat(a), sb = host.stat(b);
  return sa !== undefined && sb !== undefined && sa.id === sb.id;
}

/** Check's verdict on an image's tables (read-only, metadata only), for a change that builds on them. */
export function consistencyFacts(imagePath: string, host: HostFs = localFs): ConsistencyFacts {
  const img = Image.openFile(imagePath, false, host);
  try {
    return consistencyOf(img, img.file);
  } finally {
    img.close();
  }
}

/** The figures qemu-img amend -p prints for a change of version or refcount width (read-only). */
export function amendProgress(imagePath: string, change: AmendProgressChange, host: HostFs = localFs): number[] {
  const img = Image.openFile(imagePath, false, host);
  try {
    return amendProgressFigures(img, change);
  } finally {
    img.close();
  }
}

/** What a downgrade's rules ask of the image itself: each snapshot's disk size (qemu-img info does not report it), and a zero cluster a snapshot reads as data. */
export interface DowngradeFacts {
  snapshotDiskSizes: bigint[];
  sharedZeroCluster?: { hostOffset: number };
}

/** DowngradeFacts of an image (read-only, metadata only). */
export function downgradeFacts(imagePath: string, host: HostFs = localFs): DowngradeFacts {
  const img = Image.openFile(imagePath, false, host);
  try {
    const out: DowngradeFacts = { snapshotDiskSizes: img.readSnapshots().map((s) => s.diskSize ?? img.header.size) };
    const shared = firstSharedZeroCluster(img);
    if (shared) out.sharedZeroCluster = shared;
    return out;
  } finally {
    img.close();
  }
}
