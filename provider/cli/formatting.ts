// The `Formatting 'FILE', fmt=qcow2 ...` line qemu-img create prints: every create option in
// QEMU's option-list order, set values as given (numbers as parsed), unset ones at their default.

import type { OptionPair } from './optlist';
import type { CreateOptions } from '../model/options';

/** [name, default, kind]: QEMU's qcow2 create option list order (with file-protocol options merged). */
const ORDER: ReadonlyArray<readonly [string, string | undefined, 'str' | 'num' | 'size' | 'bool']> = [
  ['cluster_size', '65536', 'size'],
  ['extended_l2', 'off', 'bool'],
  ['preallocation', undefined, 'str'],
  ['compression_type', 'zlib', 'str'],
  ['size', undefined, 'size'],
  ['compat', undefined, 'str'],
  ['backing_file', undefined, 'str'],
  ['backing_fmt', undefined, 'str'],
  ['data_file', undefined, 'str'],
  ['data_file_raw', undefined, 'bool'],
  ['encryption', undefined, 'bool'],
  ['encrypt.format', undefined, 'str'],
  ['lazy_refcounts', 'off', 'bool'],
  ['refcount_bits', '16', 'num'],
  ['nocow', undefined, 'bool'],
  ['extent_size_hint', undefined, 'size'],
];

export function formattingLine(file: string, pairs: OptionPair[], positionalSize: string | undefined, parsed?: CreateOptions): string {
  const last = new Map<string, string>();
  for (const [k0, v0] of pairs) {
    let k = k0, v = v0;
    if (v === undefined) {
      if (k.startsWith('no') && k !== 'nocow') { k = k.slice(2); v = 'off'; } else v = 'on';
    }
    last.set(k, v);
  }
  const parts: string[] = ['fmt=qcow2'];
  for (const [name, def, kind] of ORDER) {
    let value: string | undefined;
    if (name === 'size' && (parsed?.size !== undefined || positionalSize !== undefined || last.has('size'))) {
      value = parsed?.size !== undefined ? parsed.size.toString() : last.get('size') ?? positionalSize;
    } else if (last.has(name)) {
      const v = last.get(name)!;
      if (kind === 'size' && name === 'cluster_size' && parsed?.clusterSize !== undefined) value = String(parsed.clusterSize);
      else if (kind === 'num' && name === 'refcount_bits' && parsed?.refcountBits !== undefined) value = String(parsed.refcountBits);
      else value = v;
    } else {
      value = def;
    }
    if (value === undefined) continue;
    parts.push(`${name}=${kind === 'str' ? value.replace(/,/g, ',,') : value}`);
  }
  return `Formatting '${file}', ${parts.join(' ')}`;
}
