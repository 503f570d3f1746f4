// Checksums of downloaded sources: the `sha256:<hex>` / `sha512:<hex>` spec the user writes, and
// a streaming digest over the bytes as they arrive.

import type * as Crypto from 'crypto';
import { Qcow2Error } from '../../model/errors';

/** Node's crypto, loaded when a digest starts (a plain local import has none to verify). */
const createHash = (algorithm: string): Crypto.Hash => (require('crypto') as typeof Crypto).createHash(algorithm);

/** The digests a source checksum may use. */
export type ChecksumAlgorithm = 'sha256' | 'sha512';

const HEX_LENGTH: Record<ChecksumAlgorithm, number> = { sha256: 64, sha512: 128 };

/** A parsed checksum: algorithm and lower-case hex digest. */
export interface Checksum {
  readonly algorithm: ChecksumAlgorithm;
  readonly hex: string;
}

/**
 * Parse `sha256:<64 hex digits>` or `sha512:<128 hex digits>` (algorithm and digits in any
 * case). A bad spec is an INVALID_OPTION naming `property` (the resource input `sourceChecksum`,
 * or a CLI flag).
 */
export function parseChecksum(spec: string, property = 'sourceChecksum'): Checksum {
  const m = /^\s*([A-Za-z0-9-]+):([0-9A-Fa-f]*)\s*$/.exec(spec);
  const shown = spec.length > 40 ? `${spec.slice(0, 40)}...` : spec;
  const usage = `expected 'sha256:<64 hex digits>' or 'sha512:<128 hex digits>'`;
  if (m === null) {
    throw new Qcow2Error('INVALID_OPTION', `${property}: '${shown}' is not a checksum; ${usage} (e.g. the line for the file in the publisher's SHA256SUMS)`, {
      property,
    });
  }
  const algorithm = m[1]!.toLowerCase().replace('-', '');
  if (algorithm !== 'sha256' && algorithm !== 'sha512') {
    throw new Qcow2Error('INVALID_OPTION', `${property}: the algorithm '${m[1]}' is not supported; ${usage}`, { property });
  }
  const hex = m[2]!.toLowerCase();
  if (hex.length !== HEX_LENGTH[algorithm]) {
    throw new Qcow2Error('INVALID_OPTION', `${property}: a ${algorithm} digest has ${HEX_LENGTH[algorithm]} hex digits, this one has ${hex.length}; ${usage}`, {
      property,
    });
  }
  return { algorithm, hex };
}

/** Accept either a parsed checksum or its text. */
export function toChecksum(value: Checksum | string, property = 'sourceChecksum'): Checksum {
  return typeof value === 'string' ? parseChecksum(value, property) : parseChecksum(formatChecksum(value), property);
}

/** The spec text of a checksum: `sha256:<hex>`. */
export function formatChecksum(c: Checksum): string {
  return `${c.algorithm}:${c.hex}`;
}

/** A running digest over bytes received, restartable when a download starts over. */
export class StreamingDigest {
  private hash: Crypto.Hash;
  private count = 0;

  constructor(readonly algorithm: ChecksumAlgorithm) {
    this.hash = createHash(algorithm);
  }

  /** Bytes hashed so far. */
  get bytes(): number {
    return this.count;
  }

  update(chunk: Uint8Array): void {
    this.hash.update(chunk);
    this.count += chunk.length;
  }

  /** Forget everything hashed (the download starts again from byte 0). */
  reset(): void {
    this.hash = createHash(this.algorithm);
    this.count = 0;
  }

  /** The digest so far, as a checksum (the hash state itself is kept, so more bytes may follow). */
  current(): Checksum {
    return { algorithm: this.algorithm, hex: this.hash.copy().digest('hex') };
  }
}

/** CHECKSUM error unless `actual` equals `expected`; `what` names the download (a redacted URL). */
export function verifyChecksum(expected: Checksum, actual: Checksum, what: string): void {
  if (expected.algorithm === actual.algorithm && expected.hex === actual.hex) return;
  throw new Qcow2Error(
    'CHECKSUM',
    `Checksum mismatch for ${what}: expected ${formatChecksum(expected)}, got ${formatChecksum(actual)}. ` +
      'Check sourceChecksum against the publisher\'s checksum list; if it is right, the server sent other bytes (a changed or damaged file, or a wrong Content-Length)',
    { file: what, property: 'sourceChecksum' },
  );
}
