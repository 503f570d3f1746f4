// Size text in both directions, as qemu-img 7.2 does it: qemu_strtosz (parse) and size_to_str (human output).

import { invalidOption } from './errors';

const U64_MAX = (1n << 64n) - 1n;
const I64_MAX = (1n << 63n) - 1n;

/** Receives qemu's deprecation warnings (qemu-img prints them as `qemu-img: warning: <message>`). */
export type WarningSink = (message: string) => void;

export interface ParseSizeOptions {
  /** What the number is, as in qemu-img's cvtnum(): it appears in the messages. Default `image size`. */
  name?: string;
  onWarning?: WarningSink;
}

/**
 * Parses a positional size (`qemu-img create FILE SIZE`) the way qemu-img 7.2's cvtnum() does:
 * qemu_strtosz, then the range 0..2^63-1.
 *
 * The error message has two lines for syntax errors. qemu-img prints each line as a separate
 * error_report, so a CLI prints its program-name prefix before *every* line.
 */
export function parseSize(text: string, options: ParseSizeOptions = {}): bigint {
  const name = options.name ?? 'image size';
  const r = strtosz(text, options.onWarning);
  if (r.kind === 'invalid') {
    throw new Error(
      `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for\n` +
        'kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.',
    );
  }
  if (r.kind === 'range' || r.value > I64_MAX) {
    throw new Error(`Invalid ${name} specified. Must be between 0 and ${I64_MAX}.`);
  }
  return r.value;
}

/**
 * Parses a size-typed `-o` option value (`size=`, `cluster_size=`, `extent_size_hint=`) the way
 * QemuOpts' parse_option_size does: any value below 2^64 is accepted here; ranges are checked later.
 *
 * The "expects" message carries qemu's two-line hint after a newline. qemu-img prints the first
 * line after `qemu-img: FILE: ` and the hint lines bare, so a CLI prefixes only the first line.
 */
export function parseSizeOption(name: string, text: string, onWarning?: WarningSink): bigint {
  const r = strtosz(text, onWarning);
  if (r.kind === 'range') {
    throw invalidOption(`Value '${text}' is out of range for parameter '${name}'`, name);
  }
  if (r.kind === 'invalid') {
    throw invalidOption(
      `Parameter '${name}' expects a non-negative number below 2^64\n` +
        'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n' +
        'and exabytes, respectively.',
      name,
    );
  }
  return r.value;
}

/** Result of qemu_strtosz with end == NULL (the whole text must be consumed). */
export type StrtoszResult =
  | { kind: 'ok'; value: bigint }
  | { kind: 'invalid' }
  | { kind: 'range' };

/**
 * qemu_strtosz (util/cutils.c do_strtosz, QEMU 7.2) over the whole text: decimal integer part,
 * optional decimal fraction (needs a suffix other than B, and no exponent), or 0x hex (no
 * fraction; a suffix is accepted with a deprecation warning), then one optional suffix
 * B K M G T P E (any case, powers of 1024). Whitespace is skipped only in front.
 */
export function strtosz(text: string, onWarning?: WarningSink): StrtoszResult {
  const dec = strtoull(text, 0, 10);
  if (dec.noConversion) return { kind: 'invalid' };
  let end = dec.end;
  let val = dec.value;
  let valf = 0n;
  let hex = false;
  if (dec.erange) return finish(text, end, 'range');
  // qemu rejects a sign only after the decimal parse, and only a '-' inside the digits it consumed.
  if (text.slice(0, end).includes('-')) return { kind: 'invalid' };

  if (val === 0n && (text[end] === 'x' || text[end] === 'X')) {
    const h = strtoull(text, 0, 16);
    end = h.end;
    val = h.value;
    if (h.erange) return finish(text, end, 'range');
    if (text[end] === '.') return { kind: 'invalid' };
    hex = true;
  } else if (text[end] === '.') {
    const f = parseFraction(text, end);
    if (f.kind === 'failed') {
      // qemu steps over one character whenever strtod reports an error, even past a valid number.
      end = f.end + 1;
    } else if (f.hasExponent) {
      return { kind: 'invalid' };
    } else {
      end = f.end;
      valf = toFixed64(f.value);
    }
  }
  // Reading past the terminating NUL is undefined in C; qemu-img 7.2 was seen to reject it.
  if (end > text.length) return { kind: 'invalid' };

  let mul = suffixMultiplier(text[end]);
  if (mul !== undefined) {
    if (hex) onWarning?.(`Using a multiplier suffix on hex numbers is deprecated: ${text}`);
    end++;
  } else {
    mul = 1n;
  }
  if (mul === 1n) {
    if (valf !== 0n) return { kind: 'invalid' };
  } else {
    // 64.64 fixed point times the multiplier, rounding the fraction half up, as qemu does.
    const fracProduct = valf * mul;
    let total = val * mul + (fracProduct >> 64n);
    total += (fracProduct & U64_MAX) >> 63n;
    if (total > U64_MAX) return finish(text, end, 'range');
    val = total;
  }
  if (end < text.length) return { kind: 'invalid' };
  return { kind: 'ok', value: val };
}

/** qemu's "out:" label: trailing text turns any error into EINVAL. */
function finish(text: string, end: number, kind: 'range'): StrtoszResult {
  return end < text.length ? { kind: 'invalid' } : { kind };
}

/** qemu_strtosz's suffixes (any case): powers of 1024. */
const SUFFIX_MULTIPLIERS: Readonly<Record<string, bigint>> = {
  B: 1n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n, P: 1n << 50n, E: 1n << 60n,
};

function suffixMultiplier(c: string | undefined): bigint | undefined {
  const u = c?.toUpperCase();
  return u !== undefined && Object.hasOwn(SUFFIX_MULTIPLIERS, u) ? SUFFIX_MULTIPLIERS[u] : undefined;
}

const DBL_MIN = 2.2250738585072014e-308;

type Fraction =
  | { kind: 'failed'; end: number }
  | { kind: 'ok'; value: number; end: number; hasExponent: boolean };

/** strtod on text starting at a '.', as qemu_strtod_finite sees it (decimal only, C locale). */
function parseFraction(text: string, dot: number): Fraction {
  let i = dot + 1;
  while (isDigit(text[i])) i++;
  if (i === dot + 1) return { kind: 'failed', end: dot };
  const digits = text.slice(dot + 1, i);
  let hasExponent = false;
  if (text[i] === 'e' || text[i] === 'E') {
    let j = i + 1;
    if (text[j] === '+' || text[j] === '-') j++;
    const expStart = j;
    while (isDigit(text[j])) j++;
    if (j > expStart) {
      hasExponent = true;
      i = j;
    }
  }
  const value = Number(text.slice(dot, i));
  // glibc strtod sets ERANGE on overflow and on inexact underflow; qemu then takes its error path.
  if (!Number.isFinite(value) || (value < DBL_MIN && /[1-9]/.test(digits))) {
    return { kind: 'failed', end: i };
  }
  return { kind: 'ok', value, end: i, hasExponent };
}

/** (uint64_t)(fraction * 0x1p64) on x86-64: 1.0 (a fraction rounded up) converts to 0. */
function toFixed64(fraction: number): bigint {
  const scaled = fraction * 2 ** 64;
  if (scaled >= 2 ** 64) return 0n;
  return BigInt(Math.trunc(scaled));
}

function isDigit(c: string | undefined): boolean {
  return c !== undefined && c >= '0' && c <= '9';
}

function isCSpace(c: string | undefined): boolean {
  return c === ' ' || c === '\t' || c === '\n' || c === '\v' || c === '\f' || c === '\r';
}

function digitValue(c: string | undefined): number {
  if (c === undefined) return 99;
  const code = c.charCodeAt(0);
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 97 && code <= 122) return code - 87;
  if (code >= 65 && code <= 90) return code - 55;
  return 99;
}

export interface StrtoullResult {
  /** Value as glibc returns it: wrapped modulo 2^64 for a leading '-', 2^64-1 on overflow. */
  value: bigint;
  /** Magnitude of the digits, before any negation (for signed range checks). */
  magnitude: bigint;
  negative: boolean;
  /** Index just past the number; `start` when nothing was converted. */
  end: number;
  erange: boolean;
  noConversion: boolean;
}

/** glibc strtoull from `start`: C-locale whitespace, one sign, base 0/10/16 with 0x prefix. */
export function strtoull(text: string, start: number, base: 0 | 10 | 16): StrtoullResult {
  let i = start;
  while (isCSpace(text[i])) i++;
  let negative = false;
  if (text[i] === '+' || text[i] === '-') {
    negative = text[i] === '-';
    i++;
  }
  let radix: number = base;
  // "0x" counts as a prefix only when a hex digit follows; otherwise the "0" alone is the number.
  if ((base === 0 || base === 16) && text[i] === '0' && (text[i + 1] === 'x' || text[i + 1] === 'X') && digitValue(text[i + 2]) < 16) {
    i += 2;
    radix = 16;
  } else if (base === 0) {
    radix = text[i] === '0' ? 8 : 10;
  }
  const digitsStart = i;
  let magnitude = 0n;
  let erange = false;
  const r = BigInt(radix);
  while (digitValue(text[i]) < radix) {
    magnitude = magnitude * r + BigInt(digitValue(text[i]));
    if (magnitude > U64_MAX) erange = true;
    i++;
  }
  if (i === digitsStart) {
    return { value: 0n, magnitude: 0n, negative: false, end: start, erange: false, noConversion: true };
  }
  let value: bigint;
  if (erange) value = U64_MAX;
  else value = negative ? (-magnitude) & U64_MAX : magnitude;
  return { value, magnitude, negative, end: i, erange, noConversion: false };
}

const SUFFIXES = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];

/**
 * QEMU 7.2 size_to_str(), as in `qemu-img info` ("1 GiB", "192 KiB", "0.977 MiB", "1e+03 KiB"):
 * switch unit once the value reaches 1000 of the current one, then printf("%0.3g").
 */
export function formatSize(bytes: bigint | number): string {
  const v = typeof bytes === 'bigint' ? bytes : toBigIntExact(bytes);
  if (v < 0n || v > U64_MAX) throw new RangeError(`size out of range for formatSize: ${v}`);
  // (double)val as in C: rounds to nearest even, same as Number(bigint).
  const d = Number(v);
  const e = frexpExponent(d / (1000 / 1024));
  const i = Math.trunc((e - 1) / 10);
  return `${formatG3(BigInt(d), 10 * i)} ${SUFFIXES[i]}B`;
}

function toBigIntExact(n: number): bigint {
  if (!Number.isInteger(n)) throw new RangeError(`size must be an integer: ${n}`);
  return BigInt(n);
}

/** Exponent from C frexp(): x = m * 2^e with 0.5 <= m < 1; 0 for 0. */
function frexpExponent(x: number): number {
  if (x === 0) return 0;
  let e = Math.floor(Math.log2(x)) + 1;
  while (2 ** (e - 1) > x) e--;
  while (2 ** e <= x) e++;
  return e;
}

/** printf("%.3g") of num / 2^shift, exactly, with glibc's round-half-even on the exact value. */
function formatG3(num: bigint, shift: number): string {
  if (num === 0n) return '0';
  const den = 1n << BigInt(shift);
  // Decimal exponent before rounding: 10^e0 <= num/den < 10^(e0+1).
  let e0 = num.toString().length - 1 - Math.floor(shift * Math.log10(2));
  while (compareScaled(num, den, e0) < 0) e0--;
  while (compareScaled(num, den, e0 + 1) >= 0) e0++;
  // n = round(num/den / 10^(e0-2)) half-even, a 3-digit integer (or 1000 after a carry).
  let p = num;
  let q = den;
  if (e0 <= 2) p *= 10n ** BigInt(2 - e0);
  else q *= 10n ** BigInt(e0 - 2);
  let n = p / q;
  const rem2 = (p % q) * 2n;
  if (rem2 > q || (rem2 === q && n % 2n === 1n)) n++;
  let x = e0;
  if (n === 1000n) {
    n = 100n;
    x++;
  }
  const digits = n.toString();
  if (x < -4 || x >= 3) {
    const mantissa = trimFraction(`${digits[0]}.${digits.slice(1)}`);
    const exp = Math.abs(x).toString().padStart(2, '0');
    return `${mantissa}e${x < 0 ? '-' : '+'}${exp}`;
  }
  if (x >= 0) return trimFraction(`${digits.slice(0, x + 1)}.${digits.slice(x + 1)}`);
  return trimFraction(`0.${'0'.repeat(-x - 1)}${digits}`);
}

/** Sign of num/den - 10^e. */
function compareScaled(num: bigint, den: bigint, e: number): number {
  const lhs = e >= 0 ? num : num * 10n ** BigInt(-e);
  const rhs = e >= 0 ? den * 10n ** BigInt(e) : den;
  return lhs < rhs ? -1 : lhs > rhs ? 1 : 0;
}

function trimFraction(s: string): string {
  if (!s.includes('.')) return s;
  return s.replace(/0+$/, '').replace(/\.$/, '');
}
