// `qemu-img map` output from map entries: the JSON text and the human table, byte for byte.

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

/**
 * `qemu-img map` human text. Data without an offset (compressed clusters) cannot be printed so:
 * qemu-img prints the lines before it, then refuses; `refusal` is that message.
 */
export function mapHumanText(entries: MapEntry[]): { text: string; refusal?: string } {
  let s = `${'Offset'.padEnd(16)}${'Length'.padEnd(16)}${'Mapped to'.padEnd(16)}File\n`;
  for (const e of entries) {
    if (e.data && e.offset === undefined) return { text: s, refusal: 'File contains external, encrypted or compressed clusters.' };
    if (e.data && !e.zero) s += `${hex(e.start).padEnd(16)}${hex(e.length).padEnd(16)}${hex(e.offset ?? 0).padEnd(16)}${e.filename ?? ''}\n`;
  }
  return { text: s };
}
