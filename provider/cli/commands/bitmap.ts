// `qcow2 bitmap (--add | --remove | --clear | --enable | --disable | --merge SOURCE [-b FILE
// [-F FMT]]) [-g GRANULARITY] [-f qcow2] FILE BITMAP`: qemu-img 7.2's bitmap command (syntax,
// messages, exit statuses, and the bytes it writes), and beyond it `qcow2 bitmap --dump
// [--output=human|json] [-U] FILE BITMAP`: the dirty extents, read without starting QEMU.
// Options are parsed as getopt_long parses qemu-img's (actions in command-line order, options
// and operands in any order), so every usage error has qemu-img's words.

import { cliEngine, localFile } from '../engine';
import { err, out } from '../io';
import { Exit, PROG, failOn, messageOf, report, reportEach, warn } from '../report';
import { granularityArgument } from '../../rules/bitmaps';
import type { BitmapAction, BitmapDump } from '../../engines/engine';
import { parseSize } from '../../model/size';

export const usage = 'bitmap (--add | --remove | --clear | --enable | --disable | --merge SOURCE [-b FILE [-F FMT]]) [-g GRANULARITY] FILE BITMAP';
export const description = 'change a persistent dirty bitmap as qemu-img bitmap does; --dump [--output=human|json] [-U] FILE BITMAP lists its dirty extents';

const ACTIONS = new Set(['--add', '--remove', '--clear', '--enable', '--disable']);
const LONG_VALUE: Record<string, string> = { '--merge': 'merge', '--granularity': 'g', '--source-file': 'b', '--source-format': 'F', '--output': 'output' };
const SHORT_VALUE = new Set(['b', 'f', 'F', 'g']);

/** qemu-img's getopt errors: the message, then where to look. */
function usageError(message: string): never {
  report(message);
  err(`Try '${PROG} --help' for more information\n`);
  throw new Exit(1);
}

interface Parsed {
  actions: BitmapAction[];
  values: Map<string, string>;
  flags: Set<string>;
  operands: string[];
}

function parse(argv: readonly string[]): Parsed {
  const p: Parsed = { actions: [], values: new Map(), flags: new Set(), operands: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      p.operands.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const key = eq > 0 ? a.slice(0, eq) : a;
      if (ACTIONS.has(key) || key === '--dump' || key === '--force-share' || key === '--help') {
        if (eq > 0) usageError(`option '${key}' doesn't allow an argument`);
        if (key === '--dump' || key === '--force-share' || key === '--help') p.flags.add(key.slice(2));
        else p.actions.push({ op: key.slice(2) as 'add' });
        continue;
      }
      const name = LONG_VALUE[key];
      if (name === undefined) usageError(`unrecognized option '${a}'`);
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined) usageError(`missing argument for option '${key}'`);
      if (name === 'merge') p.actions.push({ op: 'merge', source: v });
      else p.values.set(name, v);
      continue;
    }
    if (a.startsWith('-') && a !== '-') {
      // Short options, clustered as getopt allows (-U, -g4k, -b FILE).
      for (let k = 1; k < a.length; k++) {
        const c = a[k]!;
        if (c === 'h') { p.flags.add('help'); continue; }
        if (c === 'U') { p.flags.add('force-share'); continue; }
        if (!SHORT_VALUE.has(c)) usageError(`unrecognized option '-${c}'`);
        const v = k + 1 < a.length ? a.slice(k + 1) : argv[++i];
        if (v === undefined) usageError(`missing argument for option '-${c}'`);
        p.values.set(c, v);
        break;
      }
      continue;
    }
    p.operands.push(a);
  }
  return p;
}

const hex = (n: bigint) => (n === 0n ? '0' : `0x${n.toString(16)}`);

/** The dump as text: a table like qemu-img map's, or JSON (one extent per line, map's style). */
export function dumpText(d: BitmapDump, format: 'human' | 'json'): string {
  if (format === 'json') {
    return '[' + d.extents.map((e) => `{ "start": ${e.offset}, "length": ${e.length}, "dirty": true }`).join(',\n') + ']\n';
  }
  let s = `${'Offset'.padEnd(16)}Length\n`;
  for (const e of d.extents) s += `${hex(e.offset).padEnd(16)}${hex(e.length)}\n`;
  return s;
}

export async function run(argv: string[]): Promise<void> {
  const p = parse(argv);
  if (p.flags.has('help')) {
    out(`Usage: ${PROG} ${usage}\n       ${PROG} bitmap --dump [--output=human|json] [-U] FILE BITMAP\n\n${description}\n`);
    return;
  }
  const fmt = p.values.get('f');
  if (fmt !== undefined && fmt !== 'qcow2') failWith(`Unknown file format '${fmt}': this tool handles qcow2 images only`);

  if (p.flags.has('dump')) {
    if (p.actions.length > 0) failWith('--dump cannot be combined with --add, --remove, --clear, --enable, --disable or --merge');
    const output = p.values.get('output') ?? 'human';
    if (output !== 'human' && output !== 'json') failWith('--output must be used with human or json as argument.');
    if (p.operands.length !== 2) failWith('Expecting filename and bitmap name');
    const [file, name] = p.operands as [string, string];
    let d: BitmapDump;
    try {
      localFile(file, 'bitmap');
      d = await cliEngine().dumpBitmap(file, name, { forceShare: p.flags.has('force-share') });
    } catch (e) {
      failOn(e, file);
    }
    out(dumpText(d, output));
    return;
  }

  // qemu-img's checks, in its order, before the image is opened.
  if (p.actions.length === 0) failWith('Need at least one of --add, --remove, --clear, --enable, --disable, or --merge');
  let granularity: number | undefined;
  const gText = p.values.get('g');
  if (gText !== undefined) {
    let bytes: bigint;
    try {
      bytes = parseSize(gText, { name: 'granularity' });
    } catch (e) {
      reportEach(messageOf(e));
      throw new Exit(1);
    }
    granularity = granularityArgument(bytes);
    if (bytes !== 0n && !p.actions.some((a) => a.op === 'add')) failWith('granularity only supported with --add');
  }
  const srcFile = p.values.get('b');
  const srcFmt = p.values.get('F');
  if (srcFmt !== undefined && srcFile === undefined) failWith('-F only supported with -b');
  if (srcFile !== undefined && !p.actions.some((a) => a.op === 'merge')) failWith('Merge bitmap source file only supported with --merge');
  if (p.operands.length !== 2) failWith('Expecting filename and bitmap name');
  const [file, name] = p.operands as [string, string];
  const actions: BitmapAction[] = p.actions.map((a) => {
    if (a.op === 'add') return granularity !== undefined ? { op: 'add', granularity } : { op: 'add' };
    if (a.op === 'merge') return srcFile !== undefined ? { ...a, external: true } : a;
    return a;
  });
  try {
    localFile(file, 'bitmap');
    const r = await cliEngine().bitmap(file, name, actions, {
      ...(srcFile !== undefined ? { sourceFile: srcFile } : {}),
      ...(srcFmt !== undefined ? { sourceFormat: srcFmt } : {}),
      rewriteOnRefusal: true, // qemu-img's bytes, even when it refuses
    });
    for (const w of r.warnings) {
      const [first, ...rest] = w.split('\n');
      warn(first!);
      for (const l of rest) err(`${l}\n`);
    }
  } catch (e) {
    failOn(e, file);
  }
}

function failWith(message: string): never {
  report(message);
  throw new Exit(1);
}
