// Facts the rules ask for, read from the files on the engine's host (this machine, or a remote
// host through its HostFs): shared by both engines so that they refuse with the same words (the
// qemu-img engine reads only headers here, never guest data).

import { Qcow2Error } from '../model/errors';
import { HostFs, localFs } from '../qcow2/io/hostfs';
import { probeBacking } from '../qcow2/ops/create';
import type { CreateOptions } from '../model/options';
import type { CreateFacts } from '../rules/create';

function statRegular(name: string, host: HostFs): number {
  const st = host.stat(name);
  if (st === undefined) throw new Qcow2Error('NOT_FOUND', `Could not open '${name}': No such file or directory`, { file: name });
  if (st.kind !== 'file') throw new Qcow2Error('INVALID_OPTION', `Data file '${name}' is not a regular file`, { property: 'data_file', file: name });
  return st.size;
}

/** What a create of `imagePath` with `options` needs to know about the files around it. */
export function createFacts(imagePath: string, options: CreateOptions, host: HostFs = localFs): CreateFacts {
  return {
    backing: () => probeBacking(imagePath, options.backingFile!, options.backingFormat, host),
    adoptedDataFileSize: () => BigInt(statRegular(options.dataFile!, host)),
    adoptedDataFileExists: () => options.dataFile !== undefined && host.stat(options.dataFile) !== undefined,
  };
}

/** Two names for the same file (an import must never write its own source). */
export function sameFile(a: string, b: string, host: HostFs = localFs): boolean {
  try {
    const sa = host.stat(a), sb = host.stat(b);
    return sa !== undefined && sb !== undefined && sa.id === sb.id;
  } catch {
    return false;
  }
}
