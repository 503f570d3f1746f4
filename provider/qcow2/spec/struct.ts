// Fixed big-endian layouts declared once as field tables; offsets and sizes are derived from
// the table, so decode and encode can never disagree about where a field lives.

export type FieldType = 'u8' | 'u16' | 'u32' | 'u64' | `pad${number}`;
export type FieldSpec = readonly [type: FieldType, name: string];

type ValueOf<T extends FieldType> = T extends 'u64' ? bigint : T extends `pad${number}` ? never : number;

/** Object type of a field table: u8/u16/u32 as number, u64 as bigint (exact), padding omitted. */
export type StructOf<F extends readonly FieldSpec[]> = {
  [K in F[number] as K[0] extends `pad${number}` ? never : K[1]]: ValueOf<K[0]>;
};

function widthOf(type: FieldType): number {
  switch (type) {
    case 'u8': return 1;
    case 'u16': return 2;
    case 'u32': return 4;
    case 'u64': return 8;
    default: return Number(type.slice(3));
  }
}

export interface Struct<F extends readonly FieldSpec[]> {
  readonly fields: F;
  /** Total size in bytes. */
  readonly size: number;
  /** Byte offset of each named field. */
  readonly offsets: Readonly<Record<string, number>>;
  decode(buf: Uint8Array, at?: number): StructOf<F>;
  encode(value: StructOf<F>, buf: Uint8Array, at?: number): void;
}

export function defineStruct<const F extends readonly FieldSpec[]>(fields: F): Struct<F> {
  const offsets: Record<string, number> = {};
  let size = 0;
  for (const [type, name] of fields) {
    if (!type.startsWith('pad')) offsets[name] = size;
    size += widthOf(type);
  }
  return {
    fields,
    size,
    offsets,
    decode(buf, at = 0) {
      const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      const out: Record<string, number | bigint> = {};
      let off = at;
      for (const [type, name] of fields) {
        switch (type) {
          case 'u8': out[name] = dv.getUint8(off); break;
          case 'u16': out[name] = dv.getUint16(off); break;
          case 'u32': out[name] = dv.getUint32(off); break;
          case 'u64': out[name] = dv.getBigUint64(off); break;
          default: break;
        }
        off += widthOf(type);
      }
      return out as StructOf<F>;
    },
    encode(value, buf, at = 0) {
      const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
      const v = value as Record<string, number | bigint>;
      let off = at;
      for (const [type, name] of fields) {
        switch (type) {
          case 'u8': dv.setUint8(off, Number(v[name])); break;
          case 'u16': dv.setUint16(off, Number(v[name])); break;
          case 'u32': dv.setUint32(off, Number(v[name])); break;
          case 'u64': dv.setBigUint64(off, BigInt(v[name] as bigint)); break;
          default: buf.fill(0, off, off + widthOf(type)); break;
        }
        off += widthOf(type);
      }
    },
  };
}
