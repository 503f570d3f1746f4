// Building valid images in memory (planCreate + writePlan onto a MemoryBlockFile) and the
// byte-patching helpers hostile-image and fuzz tests use to break them on purpose.

import { MemoryBlockFile } from '../../provider/qcow2/io/blockfile';
import { planCreate, writePlan, type CreatePlan } from '../../provider/qcow2/ops/create';
import type { CreateOptions } from '../../provider/model/options';
import { validateCreate } from '../../provider/rules/create';

/** Plan a create exactly as createImage would (same validation), without touching a file. */
export function planFor(options: CreateOptions): CreatePlan {
  const v = validateCreate(options);
  if (!v.ok) throw new Error(`test setup: options refused: ${v.refusal.message}`);
  return planCreate(v.options);
}

/** The bytes createImage would write for `options` (the qcow2 file only). */
export function makeImage(options: CreateOptions): Buffer {
  const f = new MemoryBlockFile();
  writePlan(planFor(options), f);
  return f.bytes();
}

/** A copy of `bytes` with `fn` applied to it. */
export function patched(bytes: Uint8Array, fn: (b: Buffer) => void): Buffer {
  const b = Buffer.from(bytes);
  fn(b);
  return b;
}

export const setU8 = (b: Buffer, off: number, v: number) => { b.writeUInt8(v, off); };
export const setU32 = (b: Buffer, off: number, v: number) => { b.writeUInt32BE(v >>> 0, off); };
export const setU64 = (b: Buffer, off: number, v: bigint) => { b.writeBigUInt64BE(BigInt.asUintN(64, v), off); };
export const getU32 = (b: Uint8Array, off: number) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).readUInt32BE(off);
export const getU64 = (b: Uint8Array, off: number) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).readBigUInt64BE(off);

export interface RawExtension { magic: number; data: Uint8Array }

/** Walk the header extensions of a well-formed cluster 0 (no validation): offset, magic, length. */
export function listExtensions(bytes: Uint8Array): Array<{ at: number; magic: number; length: number }> {
  const version = getU32(bytes, 4);
  let p = version === 2 ? 72 : getU32(bytes, 100);
  const out: Array<{ at: number; magic: number; length: number }> = [];
  for (;;) {
    const magic = getU32(bytes, p);
    const length = getU32(bytes, p + 4);
    out.push({ at: p, magic, length });
    if (magic === 0) return out;
    p += 8 + ((length + 7) & ~7);
  }
}

/** Encode extension entries (type, length, data, zero padding to 8). */
export function encodeExtensions(exts: readonly RawExtension[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of exts) {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(e.magic, 0);
    head.writeUInt32BE(e.data.length, 4);
    parts.push(head, Buffer.from(e.data), Buffer.alloc(((e.data.length + 7) & ~7) - e.data.length));
  }
  return Buffer.concat(parts);
}
