// Facts the rules ask for, read from this machine's files: shared by both engines so that they
// refuse with the same words (the qemu-img engine reads only headers here, never guest data).

import * as fs from 'fs';
import { Qcow2Error } from '../model/errors';
import { ioError } from '../qcow2/io/blockfile';
import { probeBacking } from '../qcow2/ops/create';
import type { CreateOptions } from '../model/options';
import type { CreateFacts } from '../rules/create';
import type { ConsistencyFacts } from '../rules/types';
import { Image } from '../qcow2/meta/image';
import { consistencyOf } from '../qcow2/ops/check';

function statRegular(name: string): fs.Stats {
  let st: fs.Stats;
  try {
    st = fs.statSync(name);
  } catch (e) {
    throw ioError(e, name, 'open');
  }
  if (!st.isFile()) throw new Qcow2Error('INVALID_OPTION', `Data file '${name}' is not a regular file`, { property: 'data_file', file: name });
  return st;
}

/** What a create of `imagePath` with `options` needs to know about the files around it. */
export function localCreateFacts(imagePath: string, options: CreateOptions): CreateFacts {
  return {
    backing: () => probeBacking(imagePath, options.backingFile!, options.backingFormat),
    adoptedDataFileSize: () => BigInt(statRegular(options.dataFile!).size),
    adoptedDataFileExists: () => options.dataFile !== undefined && fs.existsSync(options.dataFile),
  };
}

/** Two names for the same file (an import must never write its own source). */
export function sameFile(a: string, b: string): boolean {
  try {
    const sa = fs.statSync(a), sb = fs.statSync(b);
    return sa.dev === sb.dev && sa.ino === sb.ino;
  } catch {
    return false;
  }
}

/** Check's verdict on an image's tables (read-only, metadata only), for a change that builds on them. */
export function localConsistency(imagePath: string): ConsistencyFacts {
  const img = Image.openFile(imagePath);
  try {
    return consistencyOf(img, img.file);
  } finally {
    img.close();
  }
}
