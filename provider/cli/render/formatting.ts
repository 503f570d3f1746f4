// The `Formatting 'FILE', fmt=qcow2 ...` line qemu-img create prints: every create option in
// QEMU's option-list order (model/names.ts), set values as given (numbers as parsed), unset ones
// at their default.

import type { OptionPair } from '../optlist';
import type { CreateOptions } from '../../model/options';
import { CREATE_OPTIONS } from '../../model/names';

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
  for (const { name, type: kind, formatting } of CREATE_OPTIONS) {
    if (formatting === undefined) continue;
    const def = formatting.default;
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
