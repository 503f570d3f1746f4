// Size text parsing (qemu_strtosz) and human formatting (size_to_str) against qemu-img 7.2.

import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'fs';
import { tmpdir } from 'os';
import { join } from 'path';
import { Qcow2Error } from '../../provider/model/errors';
import { formatSize, parseSize, parseSizeOption, strtosz } from '../../provider/model/size';
import { runQemuImg, skipWithoutQemu } from '../helpers/qemu';

const SYNTAX =
  'Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n' +
  'kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.';
const RANGE = 'Invalid image size specified. Must be between 0 and 9223372036854775807.';
const optionSyntax = (name: string): string =>
  `Parameter '${name}' expects a non-negative number below 2^64\n` +
  'Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n' +
  'and exabytes, respectively.';

const zeros = '0'.repeat(400);

describe('parseSize accepts what qemu-img create accepts as SIZE', () => {
  it.each<[string, bigint]>([
    ['0', 0n],
    ['1024', 1024n],
    ['1b', 1n],
    ['1B', 1n],
    ['1k', 1024n],
    ['1K', 1024n],
    ['1m', 1n << 20n],
    ['1M', 1n << 20n],
    ['1g', 1n << 30n],
    ['1T', 1n << 40n],
    ['1p', 1n << 50n],
    ['1E', 1n << 60n],
    ['1.5G', 1610612736n],
    ['1.25k', 1280n],
    ['0.5k', 512n],
    ['2.5m', 2621440n],
    ['1.5e', 1729382256910270464n],
    ['010', 10n],
    ['+1', 1n],
    [' +1', 1n],
    [' 1G', 1n << 30n],
    ['\t1G', 1n << 30n],
    ['\n1k', 1024n],
    ['0x10000', 65536n],
    ['0X10', 16n],
    ['+0x10', 16n],
    ['  0x10', 16n],
    ['9223372036854775807', 9223372036854775807n],
  ])('%j is %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each<[string, bigint, string]>([
    ['1.', 1n, 'a dot with no digits is skipped'],
    ['1.0', 1n, 'a zero fraction needs no suffix'],
    ['1.0b', 1n, 'a zero fraction is fine with B'],
    ['1.k', 1024n, 'suffix right after the dot'],
    ['1.e', 1n << 60n, 'e after the dot is the exabyte suffix, not an exponent'],
    ['0x10b', 267n, 'b is a hex digit, not the byte suffix'],
    ['1.0000001k', 1024n, 'fractions round to the nearest byte'],
    ['1.1111111111111111111111111111111G', 1193046471n, 'fraction kept to 64 bits'],
    ['1.9999999999999999k', 2048n, 'rounding half up after the 64-bit fraction'],
    ['1.99999999999999999999k', 1024n, 'a fraction rounding to 1.0 becomes 0 (x86 double->uint64)'],
    ['7.9999999999999999E', 9223372036854775680n, 'exact 64.64 fixed point product'],
    ['8388607.99999T', 9223372036843780692n, 'exact 64.64 fixed point product'],
    [`1.${zeros}1k`, 1n, 'strtod underflow makes qemu skip one character: the suffix'],
    [`1.${zeros}1kk`, 1024n, 'strtod underflow: the second k is the suffix'],
    [`1.${zeros}`, 1n, 'all-zero fraction does not underflow'],
  ])('%j is %d bytes (%s)', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });
});

describe('parseSize rejects with qemu-img messages', () => {
  it.each([
    '', '1Z', '1e3', '1e-3', '1G ', '1 G', '1KB', '1KiB', '1.5', '0.5', '1.5b', '.5', '.5k', '1..5',
    '0x', '0xg', '0x 1', '00x10', '0x1.8k', 'inf', 'nan', '1,5', '1k5', '1kB', '+-1', '1.5e3', '1.5e+',
    '1.0x10', '1.inf', '1. 5', '1.-5', ' -1', '-1', '-0', '99999999999999999999k', `1.${zeros}1`,
  ])('%j is a syntax error', (text) => {
    expect(() => parseSize(text)).toThrow(SYNTAX);
  });

  it.each([
    '9223372036854775808', '8E', '16E', '8192P', '18446744073709551615', '18446744073709551616',
    '0x8000000000000000', '0xfffffffffffffffe0', '15.9999999999999999E',
  ])('%j is out of range', (text) => {
    expect(() => parseSize(text)).toThrow(RANGE);
  });

  it('names the value in the message like cvtnum does', () => {
    expect(() => parseSize('x', { name: 'buffer size' })).toThrow(/^Invalid buffer size specified\./);
  });

  it('throws a plain Error, not a Qcow2Error', () => {
    let caught: unknown;
    try {
      parseSize('x');
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(Error);
    expect(Qcow2Error.isInstance(caught)).toBe(false);
  });
});

describe('hex numbers with a suffix', () => {
  it('are accepted with qemu-img 7.2 deprecation warning', () => {
    const warnings: string[] = [];
    expect(parseSize('0x1G', { onWarning: (w) => warnings.push(w) })).toBe(1n << 30n);
    expect(warnings).toEqual(['Using a multiplier suffix on hex numbers is deprecated: 0x1G']);
  });

  it('plain hex warns nothing', () => {
    const warnings: string[] = [];
    parseSize('0x10', { onWarning: (w) => warnings.push(w) });
    expect(warnings).toEqual([]);
  });
});

describe('parseSizeOption (size=, cluster_size= in -o)', () => {
  it.each<[string, bigint]>([
    ['1G', 1n << 30n],
    [' 1G', 1n << 30n],
    ['8E', 1n << 63n],
    ['18446744073709551615', (1n << 64n) - 1n],
  ])('accepts %j as %d: any value below 2^64', (text, bytes) => {
    expect(parseSizeOption('size', text)).toBe(bytes);
  });

  it.each(['', 'x', '1G ', '-1', 'on', '1Z', '99999999999999999999k', '16EB'])(
    '%j gets the "expects a non-negative number" message with its hint',
    (text) => {
      expect(() => parseSizeOption('cluster_size', text)).toThrow(optionSyntax('cluster_size'));
    },
  );

  it.each(['16E', '18446744073709551616', '-99999999999999999999'])('%j is out of range for the parameter', (text) => {
    expect(() => parseSizeOption('size', text)).toThrow(`Value '${text}' is out of range for parameter 'size'`);
  });

  it('throws INVALID_OPTION naming the option', () => {
    try {
      parseSizeOption('cluster_size', 'x');
      expect.unreachable();
    } catch (e) {
      expect(Qcow2Error.isInstance(e) && e.code).toBe('INVALID_OPTION');
      expect(Qcow2Error.isInstance(e) && e.property).toBe('cluster_size');
    }
  });
});

describe('strtosz reports the failure kind', () => {
  it.each<[string, string]>([
    ['1G', 'ok'],
    ['1G ', 'invalid'],
    ['16E', 'range'],
    ['16Ex', 'invalid'],
    ['18446744073709551616', 'range'],
    ['18446744073709551616k', 'invalid'],
  ])('%j -> %s', (text, kind) => {
    expect(strtosz(text).kind).toBe(kind);
  });
});

describe('formatSize matches qemu-img info human sizes', () => {
  it.each<[bigint | number, string]>([
    [0, '0 B'],
    [1, '1 B'],
    [512, '512 B'],
    [999, '999 B'],
    [1000, '0.977 KiB'],
    [1024, '1 KiB'],
    [1536, '1.5 KiB'],
    [2560, '2.5 KiB'],
    [196624, '192 KiB'],
    [102912, '100 KiB'],
    [103936, '102 KiB'],
    [1022976, '999 KiB'],
    [1023488, '1e+03 KiB'],
    [1024000, '0.977 MiB'],
    [1048064, '1 MiB'],
    [2359296, '2.25 MiB'],
    [123457024, '118 MiB'],
    [105381888, '100 MiB'],
    [1073741824, '1 GiB'],
    [1610612736n, '1.5 GiB'],
    [1125899906842624n, '1 PiB'],
    [4611686018427387904n, '4 EiB'],
    [(1n << 64n) - 1n, '16 EiB'],
  ])('%d bytes -> %j', (bytes, text) => {
    expect(formatSize(bytes)).toBe(text);
  });

  it('rounds exact ties to even like glibc printf (100.5 KiB -> 100 KiB)', () => {
    expect(formatSize(102912)).toBe('100 KiB');
  });

  it.each([-1, 1.5, -1n, 1n << 64n])('refuses %s', (bytes) => {
    expect(() => formatSize(bytes)).toThrow(RangeError);
  });
});

// --- differential: the real qemu-img -----------------------------------------------------------

const skip = skipWithoutQemu('size');
const work = skip ? '' : mkdtempSync(join(tmpdir(), 'qcow2-size-'));
afterAll(() => {
  if (work !== '') rmSync(work, { recursive: true, force: true });
});

interface QemuSizeOutcome {
  value?: bigint;
  error?: string;
  warnings: string[];
}

/** What qemu-img create makes of a size, without creating anything (the directory does not exist). */
function qemuSize(args: string[]): QemuSizeOutcome {
  const target = join(work, 'missing-dir', 'x.qcow2');
  const r = runQemuImg(['create', '-f', 'qcow2', ...args.map((a) => a.replace('TARGET', target))]);
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  const warnings = lines.filter((l) => l.startsWith('qemu-img: warning: ')).map((l) => l.slice(19));
  const m = /^Formatting .* size=(-?\d+)\b/m.exec(r.stdout);
  if (m) return { value: BigInt.asUintN(64, BigInt(m[1])), warnings };
  const errors = lines.filter((l) => !l.startsWith('qemu-img: warning: '));
  const error = errors
    .map((l) => l.replace(`qemu-img: ${target}: `, '').replace(/^qemu-img: /, ''))
    .join('\n');
  return { error, warnings };
}

function ours(parse: (onWarning: (w: string) => void) => bigint): QemuSizeOutcome {
  const warnings: string[] = [];
  try {
    return { value: parse((w) => warnings.push(w)), warnings };
  } catch (e) {
    return { error: (e as Error).message, warnings };
  }
}

const POSITIONAL = [
  '1024', '1.5G', '0x10000', '0x1G', '0x10k', '0x10b', '1Z', '1e3', ' 1G', '1G ', '\t1M', '1b', '1k', '1t',
  '1.5', '1.0', '1.', '1.k', '1.e', '.5k', '1..5', '0x', '00x10', '0x1.8k', '1.0000001k', '1.25k', '+1',
  '1KB', '1 G', '', '9223372036854775807', '9223372036854775808', '18446744073709551616', '8E', '7E',
  '16E', '99999999999999999999k', '8388607.99999T', '7.99999999999999999E', '7.9999999999999999E',
  '1.99999999999999999999k', '1.9999999999999999k', '1.1111111111111111111111111111111G', 'inf',
  `1.${zeros}1k`, `1.${zeros}1kk`,
];

const OPTION_VALUES = [
  ...POSITIONAL.filter((s) => !s.includes(',')),
  '-1', '-0', ' -1', '-99999999999999999999', '8E', '16383P', '18446744073709551616', 'on',
];

describe('parseSize agrees with qemu-img create FILE SIZE', () => {
  it.skipIf(skip).each(POSITIONAL)('%j', (text) => {
    expect(ours((w) => parseSize(text, { onWarning: w }))).toEqual(qemuSize([`TARGET`, text]));
  });
});

describe('parseSizeOption agrees with qemu-img create -o size=', () => {
  it.skipIf(skip).each(OPTION_VALUES)('%j', (text) => {
    const q = qemuSize(['-o', `size=${text}`, 'TARGET']);
    // qemu uses (uint64_t)-1 internally for "no size", which it then reports as missing.
    if (q.error === 'Image creation needs a size parameter') {
      expect(parseSizeOption('size', text)).toBe((1n << 64n) - 1n);
      return;
    }
    // The target directory is missing, so qemu stops before its qcow2 driver re-parses size= (and
    // warns a second time); toCreateOptions covers that second parse.
    expect(ours((w) => parseSizeOption('size', text, w))).toEqual(q);
  });
});

describe('formatSize agrees with qemu-img info', () => {
  const sizes = [
    0n, 512n, 1024n, 1536n, 2560n, 102912n, 103936n, 196608n, 1022976n, 1023488n, 1024000n, 1048064n,
    1048576n, 2359296n, 105381888n, 123457024n, 1073217536n, 1610612736n, 1099511627264n, 1125899906842624n,
    1151795604700004352n, 2305843009213693952n, 4611686018427387904n, 4611686018427387392n,
  ];
  it.skipIf(skip).each(sizes)('%d bytes', (bytes) => {
    const r = runQemuImg(['info', `json:{"driver":"null-co","size":${bytes}}`]);
    const m = /^virtual size: (.*) \((\d+) bytes\)$/m.exec(r.stdout);
    expect(m?.[2]).toBe(bytes.toString());
    expect(formatSize(bytes)).toBe(m?.[1]);
  });
});
