// JSON for QMP, exact in 64 bits: QEMU sends sizes and counts as integers that may exceed 2^53, so
// integers outside the safe range decode to bigint (JSON.parse would round them), and bigint
// encodes as a bare integer. Also the framing: QMP sends one JSON object after another on a byte
// stream (a line each, or several lines each with the monitor's `pretty=on`).

/** A decoded QMP value: integers beyond ±(2^53 - 1) are bigint, all other numbers are number. */
export type QmpValue = null | boolean | number | bigint | string | QmpValue[] | { [key: string]: QmpValue };

/** An object as QMP sends it. */
export type QmpObject = { [key: string]: QmpValue };

class Parser {
  private i = 0;
  constructor(private readonly s: string) {}

  private fail(what: string): never {
    throw new SyntaxError(`${what} at character ${this.i}`);
  }

  private ws(): void {
    for (;;) {
      const c = this.s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.i++;
      else return;
    }
  }

  parse(): QmpValue {
    const v = this.value();
    this.ws();
    if (this.i !== this.s.length) this.fail('unexpected text after the value');
    return v;
  }

  private value(): QmpValue {
    this.ws();
    const c = this.s[this.i];
    if (c === '{') return this.object();
    if (c === '[') return this.array();
    if (c === '"') return this.string();
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return this.number();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]] as const) {
      if (this.s.startsWith(word, this.i)) {
        this.i += word.length;
        return v;
      }
    }
    return this.fail(c === undefined ? 'unexpected end' : `unexpected '${c}'`);
  }

  /**
   * An object's members or an array's elements, from its opening bracket to `close`: `item`
   * reads one (after the bracket or a comma).
   */
  private sequence(close: '}' | ']', item: () => void): void {
    this.i++;
    this.ws();
    if (this.s[this.i] === close) {
      this.i++;
      return;
    }
    for (;;) {
      item();
      this.ws();
      const c = this.s[this.i++];
      if (c === close) return;
      if (c !== ',') this.fail(`expected ',' or '${close}'`);
    }
  }

  private object(): QmpObject {
    const out: QmpObject = {};
    this.sequence('}', () => {
      this.ws();
      if (this.s[this.i] !== '"') this.fail('expected a member name');
      const k = this.string();
      this.ws();
      if (this.s[this.i] !== ':') this.fail("expected ':'");
      this.i++;
      // defineProperty: a member named __proto__ is data, not the prototype.
      Object.defineProperty(out, k, { value: this.value(), enumerable: true, writable: true, configurable: true });
    });
    return out;
  }

  private array(): QmpValue[] {
    const out: QmpValue[] = [];
    this.sequence(']', () => out.push(this.value()));
    return out;
  }

  private string(): string {
    const start = ++this.i;
    // Fast path: no escapes.
    const close = this.s.indexOf('"', start);
    if (close < 0) this.fail('unterminated string');
    const plain = this.s.slice(start, close);
    if (!plain.includes('\\')) {
      this.i = close + 1;
      return plain;
    }
    this.i = start - 1;
    const m = /^"(?:[^"\\\u0000-\u001f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"/.exec(this.s.slice(this.i));
    if (m === null) this.fail('bad string');
    this.i += m[0].length;
    return JSON.parse(m[0]) as string;
  }

  private number(): number | bigint {
    const m = /^-?(?:0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(this.s.slice(this.i, this.i + 400));
    if (m === null) return this.fail('bad number');
    this.i += m[0].length;
    if (m[1] === undefined && m[2] === undefined) {
      const n = Number(m[0]);
      return Number.isSafeInteger(n) ? n : BigInt(m[0]);
    }
    return Number(m[0]);
  }
}

/** Parse one JSON text; integers beyond the safe range become bigint. Throws SyntaxError. */
export function parseJson(text: string): QmpValue {
  return new Parser(text).parse();
}

/** Encode a value as JSON; bigint as a bare integer; undefined members are left out. */
export function encodeJson(v: unknown): string {
  switch (typeof v) {
    case 'bigint':
      return v.toString();
    case 'number':
      if (!Number.isFinite(v)) throw new TypeError(`${v} has no JSON form`);
      return String(v);
    case 'boolean':
      return v ? 'true' : 'false';
    case 'string':
      return JSON.stringify(v);
    case 'object':
      if (v === null) return 'null';
      if (Array.isArray(v)) return `[${v.map((x) => (x === undefined ? 'null' : encodeJson(x))).join(',')}]`;
      return `{${Object.entries(v)
        .filter(([, x]) => x !== undefined)
        .map(([k, x]) => `${JSON.stringify(k)}:${encodeJson(x)}`)
        .join(',')}}`;
    default:
      throw new TypeError(`a ${typeof v} has no JSON form`);
  }
}

/**
 * Splits a byte stream into top-level JSON texts: tracks nesting outside strings, so it works for
 * one object per line and for pretty-printed objects alike. Bytes are decoded as UTF-8 across
 * chunk boundaries.
 */
export class JsonSplitter {
  private buf = '';
  private depth = 0;
  private inString = false;
  private escape = false;
  private start = -1;
  private scanned = 0;
  private readonly decoder = new TextDecoder('utf-8');

  /** Feed bytes; returns the complete texts they finished. Throws when the stream is not JSON objects. */
  push(chunk: Uint8Array, limit: number): string[] {
    this.buf += this.decoder.decode(chunk, { stream: true });
    const out: string[] = [];
    const s = this.buf;
    let i = this.scanned;
    for (; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (this.inString) {
        if (this.escape) this.escape = false;
        else if (c === 0x5c) this.escape = true;
        else if (c === 0x22) this.inString = false;
        continue;
      }
      if (c === 0x22) {
        if (this.depth === 0) throw new SyntaxError('a string outside any object');
        this.inString = true;
      } else if (c === 0x7b || c === 0x5b) {
        if (this.depth === 0) {
          if (c === 0x5b) throw new SyntaxError('an array outside any object');
          this.start = i;
        }
        this.depth++;
      } else if (c === 0x7d || c === 0x5d) {
        if (this.depth === 0) throw new SyntaxError(`an unmatched '${String.fromCharCode(c)}'`);
        if (--this.depth === 0) {
          out.push(s.slice(this.start, i + 1));
          this.start = -1;
        }
      } else if (this.depth === 0 && c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) {
        throw new SyntaxError(`'${String.fromCharCode(c)}' outside any object`);
      }
    }
    // Keep only the unfinished object.
    if (this.start >= 0) {
      this.buf = s.slice(this.start);
      this.scanned = i - this.start;
      this.start = 0;
    } else {
      this.buf = '';
      this.scanned = 0;
    }
    if (this.buf.length > limit) throw new RangeError(`a message longer than ${limit} characters`);
    return out;
  }
}
