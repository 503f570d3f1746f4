// A provider/rules refusal as the typed error both engines throw: same code, words and property.

import { Qcow2Error, Qcow2ErrorCode } from '../model/errors';
import type { Refusal } from '../rules/types';
import { sizeValue, validateSizeValue } from '../rules/size';

export function refused(r: Refusal, file?: string, code: Qcow2ErrorCode = 'REFUSED'): Qcow2Error {
  return new Qcow2Error(code, r.message, file === undefined ? { property: r.property } : { property: r.property, file });
}

/** Throw when the rules refused; nothing happens otherwise. */
export function throwIfRefused(r: Refusal | undefined, file?: string): void {
  if (r) throw refused(r, file);
}

/**
 * A size argument of a public entry point (Engine, synchronous API) as a bigint, or the
 * refusal naming its property: never negative (unless `signed`), fractional, NaN or infinite.
 */
export function sizeArg(v: unknown, property = 'size', signed = false): bigint {
  const r = validateSizeValue(v, property, signed);
  if (r) throw refused(r, undefined, 'INVALID_OPTION');
  return sizeValue(v as bigint | number);
}
