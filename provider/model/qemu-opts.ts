// QemuOpts text (`-o` lists, --image-opts): the tokenizer, pure. The command line types the
// items (cli/optlist.ts); image names read --image-opts with it (cli/names.ts).

/** One `-o` item as written: a bare `key` (no `=`) has value `undefined`. */
export type OptionPair = [key: string, value: string | undefined];

/**
 * Splits `-o` text like QemuOpts' get_opt_name_value(): items separated by ',', `,,` is a literal
 * ',' inside a value (never inside a key), the key ends at the first '=' or ','. Empty items come
 * back as key ''. No item is dropped or interpreted here; see toCreateOptions for flags and `id`.
 */
export function parseOptionList(text: string): OptionPair[] {
  const pairs: OptionPair[] = [];
  let p = 0;
  while (p < text.length) {
    let keyEnd = p;
    while (keyEnd < text.length && text[keyEnd] !== '=' && text[keyEnd] !== ',') keyEnd++;
    const key = text.slice(p, keyEnd);
    if (text[keyEnd] !== '=') {
      pairs.push([key, undefined]);
      p = keyEnd;
    } else {
      let value = '';
      p = keyEnd + 1;
      for (;;) {
        const comma = text.indexOf(',', p);
        const offset = comma < 0 ? text.length : comma;
        value += text.slice(p, offset);
        if (offset < text.length && text[offset + 1] === ',') {
          value += ',';
          p = offset + 2;
          continue;
        }
        p = offset;
        break;
      }
      pairs.push([key, value]);
    }
    if (text[p] === ',') p++;
  }
  return pairs;
}
