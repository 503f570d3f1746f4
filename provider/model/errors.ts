// Typed errors of the format engine: a small stable set of codes, plus the byte offset or
// option involved. Recognised across module copies by a brand, not by instanceof.

/** Stable error codes. Callers switch on these; messages may be reworded, codes may not. */
export type Qcow2ErrorCode =
  /** A create/amend option is invalid or a combination is not allowed (message is qemu-img's). */
  | 'INVALID_OPTION'
  /** The file is not a valid qcow2 image, or a structure in it is out of bounds. */
  | 'INVALID_IMAGE'
  /** The image uses a feature this engine does not implement (unknown incompatible bits, encryption). */
  | 'UNSUPPORTED'
  /** A file we were asked to create already exists and we will not overwrite it. */
  | 'EXISTS'
  /** A file we need does not exist. */
  | 'NOT_FOUND'
  /** Another process (a VM, qemu-nbd) holds a conflicting QEMU image lock. */
  | 'LOCKED'
  /** A refused change (rules/): what was asked, why not, and what to do instead. */
  | 'REFUSED'
  /** An operating-system I/O error. */
  | 'IO'
  /** A remote host could not be reached, or the connection to it was lost (may succeed when retried). */
  | 'CONNECTION'
  /** A remote host refused every credential offered (user, key, agent or password). */
  | 'AUTH'
  /** A remote host's key (or an HTTPS server's certificate) is unknown, changed, revoked or not trusted: nothing was sent to it. */
  | 'HOST_KEY'
  /** QEMU answered a QMP command with an error (its class and description are in the message). */
  | 'QMP'
  /** An HTTP server answered with an error status, redirects without end, or breaks the protocol (ranges, lengths). */
  | 'HTTP'
  /** Bytes received do not match the checksum the user gave (`sourceChecksum`). */
  | 'CHECKSUM';

const BRAND = Symbol.for('pulumi-qcow2.Qcow2Error');

export interface Qcow2ErrorDetails {
  /** Byte offset in the image file the error is about, when there is one. */
  offset?: number | bigint;
  /** The option or property the error is about (`cluster_size`, `dataFileRaw`, ...). */
  property?: string;
  /** The file the error is about (for a download, its URL with credentials redacted). */
  file?: string;
  /** The underlying error. */
  cause?: unknown;
}

export class Qcow2Error extends Error {
  readonly code: Qcow2ErrorCode;
  readonly offset?: number | bigint;
  readonly property?: string;
  readonly file?: string;
  readonly [BRAND] = true;

  constructor(code: Qcow2ErrorCode, message: string, details: Qcow2ErrorDetails = {}) {
    super(message, details.cause !== undefined ? { cause: details.cause } : undefined);
    this.name = 'Qcow2Error';
    this.code = code;
    if (details.offset !== undefined) this.offset = details.offset;
    if (details.property !== undefined) this.property = details.property;
    if (details.file !== undefined) this.file = details.file;
  }

  /** True for a Qcow2Error from any copy of this module (brand check, not instanceof). */
  static isInstance(e: unknown): e is Qcow2Error {
    return typeof e === 'object' && e !== null && (e as Record<symbol, unknown>)[BRAND] === true;
  }
}

/** Shorthand for an invalid-image error at a byte offset. */
export function invalidImage(message: string, offset?: number | bigint): Qcow2Error {
  return new Qcow2Error('INVALID_IMAGE', message, offset === undefined ? {} : { offset });
}

/** Shorthand for an invalid-option error naming the option. */
export function invalidOption(message: string, property?: string): Qcow2Error {
  return new Qcow2Error('INVALID_OPTION', message, property === undefined ? {} : { property });
}

/**
 * An error as structured-clone data, for crossing a thread (the native engine's workers, the
 * transport bridge): a Qcow2Error keeps its code, file, property and offset (bigint included) and
 * is rebuilt branded; any other error keeps its name, message and string code.
 */
export interface ErrorData {
  qcow2: boolean;
  name: string;
  message: string;
  code?: string;
  file?: string;
  property?: string;
  offset?: number | bigint;
}

export function errorToData(e: unknown): ErrorData {
  if (Qcow2Error.isInstance(e)) {
    const out: ErrorData = { qcow2: true, name: e.name, message: e.message, code: e.code };
    if (e.file !== undefined) out.file = e.file;
    if (e.property !== undefined) out.property = e.property;
    if (e.offset !== undefined) out.offset = e.offset;
    return out;
  }
  const err = e as { name?: unknown; message?: unknown; code?: unknown };
  const out: ErrorData = {
    qcow2: false,
    name: typeof err?.name === 'string' ? err.name : 'Error',
    message: typeof err?.message === 'string' ? err.message : String(e),
  };
  if (typeof err?.code === 'string') out.code = err.code;
  return out;
}

export function errorFromData(e: ErrorData): Error {
  if (e.qcow2) {
    const details: Qcow2ErrorDetails = {};
    if (e.file !== undefined) details.file = e.file;
    if (e.property !== undefined) details.property = e.property;
    if (e.offset !== undefined) details.offset = e.offset;
    return new Qcow2Error(e.code as Qcow2ErrorCode, e.message, details);
  }
  const err = new Error(e.message) as Error & { code?: string };
  err.name = e.name;
  if (e.code !== undefined) err.code = e.code;
  return err;
}
