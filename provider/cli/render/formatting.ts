// The `Formatting 'FILE', fmt=qcow2 ...` line qemu-img create prints (qemu_opts_print): every
// create option in QEMU's option-list order (model/names.ts), set values as given, except that
// size and number options print their parsed value (`size=67108864` for `64M`), unset ones at
// their default. An overlay without a size prints the backing file's size, as qemu-img sets it
// from the opened backing file before printing.

import type { OptionPair } from '../optlist';
import { CREATE_OPTIONS, optionSpec, type OptionName, type OptionSpec } from '../../model/names';

/** raw's create options (the file protocol's), in their option-list order; none has a default. */
const RAW_ORDER: readonly OptionName[] = ['size', 'nocow', 'preallocation', 'extent_size_hint'];
import { parseSizeOption, strtoull } from '../../model/size';

/** Sizes and numbers as qemu_opts_print shows them: the parsed value, or the text when it does not parse. */
function numeric(kind: string, name: string, text: string): string {
  try {
    if (kind === 'size') return parseSizeOption(name, text).toString();
    const r = strtoull(text, 0, 0);
    if (!r.noConversion && r.end === text.length && !r.erange) return r.value.toString();
  } catch {
    // printed as written
  }
  return text;
}

/**
 * @param size the image size when known: the positional SIZE as parsed, or the size create
 *   derived from the backing file; otherwise `size=` in the options is printed as parsed.
 */
export function formattingLine(file: string, pairs: OptionPair[], size: bigint | undefined, fmt = 'qcow2'): string {
  const last = new Map<string, string>();
  for (const [k0, v0] of pairs) {
    let k = k0, v = v0;
    if (v === undefined) {
      if (k.startsWith('no') && k !== 'nocow') { k = k.slice(2); v = 'off'; } else v = 'on';
    }
    last.set(k, v);
  }
  const parts: string[] = [`fmt=${fmt}`];
  const list: readonly OptionSpec[] = fmt === 'raw' ? RAW_ORDER.map((n) => ({ ...optionSpec(n)!, formatting: {} })) : CREATE_OPTIONS;
  for (const { name, type: kind, formatting } of list) {
    if (formatting === undefined) continue;
    let value: string | undefined;
    if (name === 'size' && size !== undefined) value = size.toString();
    else if (last.has(name)) value = kind === 'size' || kind === 'num' ? numeric(kind, name, last.get(name)!) : last.get(name)!;
    else value = formatting.default;
    if (value === undefined) continue;
    parts.push(`${name}=${kind === 'str' ? value.replace(/,/g, ',,') : value}`);
  }
  return `Formatting '${file}', ${parts.join(' ')}`;
}
