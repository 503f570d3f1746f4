// The native engine's operations: ask provider/rules, then drive provider/format. This is the
// glue layer: format/ knows how, rules/ knows what is legal, and nothing below reaches up.

import * as fs from 'fs';
import { Qcow2Error } from '../format/errors';
import { planCreate, probeBacking, writeNewImage } from '../format/create';
import type { CreateOptions, ResolvedCreateOptions } from '../format/options';
import { validateAdoption, validateCreate } from '../rules/create';
import { ioError } from '../format/blockfile';

/** How create treats the world outside the new image. */
export interface CreateBehaviour {
  /** qemu-img's -u: do not open the backing file (then a size is required). */
  unsafeBacking?: boolean;
}

function refused(r: { property: string; message: string }): Qcow2Error {
  return new Qcow2Error('INVALID_OPTION', r.message, { property: r.property });
}

/** Validate create options (rules) and derive the size from the backing file or adopted data file. */
export function resolveCreate(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}): ResolvedCreateOptions {
  const first = validateCreate(options);
  if (!first.ok) throw refused(first.refusal);
  let resolved = first.options;
  if (options.size === undefined) {
    let size: bigint | undefined;
    if (options.backingFile !== undefined && !behaviour.unsafeBacking) {
      const probe = probeBacking(imagePath, options.backingFile, options.backingFormat);
      if (options.backingFormat === undefined) {
        throw new Qcow2Error('INVALID_OPTION', `Backing file specified without backing format\nDetected format of ${probe.detectedFormat}.`, { property: 'backing_fmt' });
      }
      size = probe.size;
    } else if (options.adoptDataFile && options.dataFile !== undefined) {
      size = BigInt(statFile(options.dataFile).size);
    }
    if (size === undefined) throw new Qcow2Error('INVALID_OPTION', 'Image creation needs a size parameter', { property: 'size' });
    const again = validateCreate({ ...options, size });
    if (!again.ok) throw refused(again.refusal);
    resolved = again.options;
  } else if (options.backingFile !== undefined && !behaviour.unsafeBacking) {
    // Like qemu-img, open the backing file even when the size is given.
    probeBacking(imagePath, options.backingFile, options.backingFormat);
    if (options.backingFormat === undefined) {
      const probe = probeBacking(imagePath, options.backingFile, undefined);
      throw new Qcow2Error('INVALID_OPTION', `Backing file specified without backing format\nDetected format of ${probe.detectedFormat}.`, { property: 'backing_fmt' });
    }
  }
  if (resolved.adoptDataFile && resolved.dataFile !== undefined && fs.existsSync(resolved.dataFile)) {
    const r = validateAdoption(resolved.dataFile, BigInt(statFile(resolved.dataFile).size), resolved.size);
    if (r) throw refused(r);
  }
  return resolved;
}

function statFile(name: string): fs.Stats {
  let st: fs.Stats;
  try {
    st = fs.statSync(name);
  } catch (e) {
    throw ioError(e, name, 'open');
  }
  if (!st.isFile()) throw new Qcow2Error('INVALID_OPTION', `Data file '${name}' is not a regular file`, { property: 'data_file', file: name });
  return st;
}

/**
 * Create a qcow2 image. All validation happens before any file is touched; an existing image
 * or data file is never overwritten (a data file can be adopted, unchanged, on request).
 */
export function createImage(imagePath: string, options: CreateOptions, behaviour: CreateBehaviour = {}): void {
  writeNewImage(imagePath, planCreate(resolveCreate(imagePath, options, behaviour)));
}
