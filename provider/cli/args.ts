// A small qemu-img-style argument parser for the read-only commands (info, check, map), which
// must start fast: flags, options with a value (`-f X`, `--output=X` or `--output X`), and
// positional arguments. The commands that change images use commander.

import { fail } from './report';
import { dataFileOverrideRefusal, parseImageName, type ImageName } from './names';

export interface ArgSpec {
  /** Flags without a value: short or long spelling -> the name in the result. */
  flags: Record<string, string>;
  /** Options with a value: short or long spelling -> the name in the result. */
  values: Record<string, string>;
}

export interface ParsedArgs {
  flags: Set<string>;
  values: Map<string, string>;
  positional: string[];
}

export function parseArgs(argv: readonly string[], spec: ArgSpec): ParsedArgs {
  const out: ParsedArgs = { flags: new Set(), values: new Map(), positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      out.positional.push(...argv.slice(i + 1));
      break;
    }
    if (!a.startsWith('-') || a === '-') {
      out.positional.push(a);
      continue;
    }
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const key = eq > 0 ? a.slice(0, eq) : a;
    if (Object.hasOwn(spec.flags, key) && eq < 0) {
      out.flags.add(spec.flags[key]!);
    } else if (Object.hasOwn(spec.values, key)) {
      let v: string | undefined;
      if (eq > 0) v = a.slice(eq + 1);
      else v = argv[++i];
      if (v === undefined) fail(`option '${key}' argument missing`);
      out.values.set(spec.values[key]!, v);
    } else {
      fail(`unknown option '${key}'`);
    }
  }
  return out;
}

/** `--output`: human (default) or json; anything else is qemu-img's error. */
export function outputFormat(v: string | undefined): 'human' | 'json' {
  if (v === undefined || v === 'human') return 'human';
  if (v === 'json') return 'json';
  fail('--output must be used with human or json as argument.');
}

/** `-f`: this tool handles qcow2 only. */
export function requireQcow2(fmt: string | undefined): void {
  if (fmt !== undefined && fmt !== 'qcow2') fail(`Unknown file format '${fmt}': this tool handles qcow2 images only`);
}

/** qemu-img's format drivers that can read images but not create or amend them. */
export const READ_ONLY_DRIVERS: ReadonlySet<string> = new Set(['bochs', 'cloop', 'dmg']);

/** `-f` where raw is taken too. */
export function requireQcow2OrRaw(fmt: string | undefined): void {
  if (fmt !== undefined && fmt !== 'qcow2' && fmt !== 'raw') fail(`Unknown file format '${fmt}': this tool handles qcow2 and raw images only`);
}

/** `-f`/`-O` of a command that creates an image: qemu-img's words for its read-only drivers. */
export function requireCreatable(fmt: string | undefined): void {
  if (fmt !== undefined && READ_ONLY_DRIVERS.has(fmt)) fail(`Format driver '${fmt}' does not support image creation`);
  requireQcow2OrRaw(fmt);
}

/** What the read-only commands (info, check, map) take: `[-f qcow2] [-U] [--output=FMT] [-q] FILE`. */
export interface ReadArgs {
  /** The name as given (for messages). */
  file: string;
  /** The file it names (on image.remote when that is set), and how qemu-img prints it. */
  image: ImageName;
  path: string;
  display: string;
  /** -f: qcow2 or raw; undefined means probe. */
  format?: 'qcow2' | 'raw';
  output: 'human' | 'json';
  forceShare: boolean;
  quiet: boolean;
  /** check's -r/--repair, as given (the command validates it). */
  repair?: string;
}

export function parseReadArgs(argv: readonly string[], opts: { quiet?: boolean; repair?: boolean } = {}): ReadArgs {
  const a = parseArgs(argv, {
    flags: { '-U': 'forceShare', '--force-share': 'forceShare', '--image-opts': 'imageOpts', ...(opts.quiet ? { '-q': 'quiet' } : {}) },
    values: { '-f': 'format', '--output': 'output', ...(opts.repair ? { '-r': 'repair', '--repair': 'repair' } : {}) },
  });
  const repair = a.values.get('repair');
  let format = a.values.get('format');
  requireQcow2OrRaw(format);
  const output = outputFormat(a.values.get('output'));
  const file = a.positional[0];
  if (file === undefined) fail('Expecting one image file name');
  if (a.positional.length > 1) fail(`Unexpected argument '${a.positional[1]}'`);
  const name = imageName(file, a.flags.has('imageOpts'));
  format ??= name.format;
  return {
    file, image: name, path: name.path, display: name.display, output, forceShare: a.flags.has('forceShare'), quiet: a.flags.has('quiet'),
    ...(format !== undefined ? { format: format as 'qcow2' | 'raw' } : {}),
    ...(repair !== undefined ? { repair } : {}),
  };
}

/** An image name from the command line (plain, file:, json:, --image-opts, or ssh://); refusals as qemu-img's error lines. */
export function imageName(name: string, imageOpts = false, create = false, dataFileOverride = false): ImageName {
  try {
    const image = parseImageName(name, imageOpts);
    const bad = dataFileOverride ? undefined : dataFileOverrideRefusal(image, 'this command');
    if (bad) throw bad;
    return image;
  } catch (e) {
    // create reports `FILE: message`; the commands that open an image `Could not open 'FILE': message`.
    if (create) fail((e as Error).message, name);
    fail(`Could not open '${name}': ${(e as Error).message}`);
  }
}

/** One option as getopt returned it: its name (`l`, `force-share`) and its value, if it takes one. */
export type Opt = [name: string, value: string | undefined];

/**
 * getopt_long as qemu-img calls it: `short` is its optstring without the leading ':' (a letter
 * followed by ':' takes a value, attached or the next argument; letters combine, `-qU`),
 * `long` names the long options and whether they take a value (`--name=value` or the next
 * argument). Options and file names may come in any order (GNU permutation); `--` ends the
 * options. Errors are qemu-img's.
 */
export function getopt(argv: readonly string[], short: string, long: Record<string, boolean> = {}): { opts: Opt[]; positional: string[] } {
  const opts: Opt[] = [];
  const positional: string[] = [];
  const takesValue = (c: string) => short[short.indexOf(c) + 1] === ':';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq < 0 ? undefined : eq);
      if (!Object.hasOwn(long, name)) fail(`unrecognized option '${a}'`);
      if (!long[name]) {
        if (eq >= 0) fail(`option '--${name}' doesn't allow an argument`);
        opts.push([name, undefined]);
        continue;
      }
      const v = eq >= 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined) fail(`missing argument for option '${a}'`);
      opts.push([name, v]);
      continue;
    }
    if (!a.startsWith('-') || a === '-') {
      positional.push(a);
      continue;
    }
    for (let j = 1; j < a.length; j++) {
      const c = a[j]!;
      if (c === ':' || !short.includes(c)) fail(`unrecognized option '${a}'`);
      if (!takesValue(c)) {
        opts.push([c, undefined]);
        continue;
      }
      const v = j + 1 < a.length ? a.slice(j + 1) : argv[++i];
      if (v === undefined) fail(`missing argument for option '${a}'`);
      opts.push([c, v]);
      break;
    }
  }
  return { opts, positional };
}
