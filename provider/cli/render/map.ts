// `qemu-img map` output from map entries: the JSON text and the human table, byte for byte.

import { Qcow2Error } from '../../model/errors';
import type { MapEntry } from '../../qcow2/ops/map';

function jsonEntry(e: MapEntry): string {
  return `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}` +
    (e.offset !== undefined ? `, "offset": ${e.offset}` : '') + '}';
}

/** `qemu-img map --output=json` text. */
export function mapJsonText(entries: MapEntry[]): string {
  return '[' + entries.map(jsonEntry).join(',\n') + ']\n';
}

const hex = (n: number) => (n === 0 ? '0' : `0x${n.toString(16)}`);

/** `qemu-img map` human text; refuses data without an offset (compressed clusters) as qemu-img does. */
export function mapHumanText(entries: MapEntry[]): string {
  let s = `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`;
  for (const e of entries) {
    if (e.data && e.offset === undefined) {
      throw new Qcow2Error('UNSUPPORTED', 'File contains external, encrypted or compressed clusters.');
    }
    if (e.data && !e.zero) s += `${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.offset ?? 0).padEnd(16)}${e.filename ?? ''}\n`;
  }
  return s;
}
