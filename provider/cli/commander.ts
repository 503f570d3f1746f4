// commander, configured the way every command that changes images uses it: qemu-img's error
// lines, no exit from inside the parser, options collected by repetition.

import { Command } from 'commander';
import { PROG } from './report';
import { err, out } from './io';

export function command(name: string): Command {
  return new Command(`${PROG} ${name}`)
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({ writeOut: out, writeErr: err, outputError: (str) => err(`${PROG}: ${str.replace(/^error: /, '')}`) });
}

/** Repeatable option values (`-o a -o b`). */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** An option: its flags and help; `repeatable` collects every value (`-o a -o b`) into a list. */
export type OptionSpec = readonly [flags: string, help: string, repeatable?: 'repeatable'];

/** What a command declares: its usage line (starting with its name), description, options and arguments. */
export interface CommandSpec {
  name: string;
  usage: string;
  description: string;
  options: readonly OptionSpec[];
  /** commander's argument syntax: `<file>` required, `[size]` optional. */
  args: readonly string[];
}

/**
 * Parse `argv` as `spec` declares: the arguments in order (undefined where an optional one is
 * missing) and the options; undefined when commander answered by itself (help).
 */
export function parseCommand<O>(spec: CommandSpec, argv: string[]): { args: Array<string | undefined>; o: O } | undefined {
  const c = command(spec.name).description(spec.description).usage(spec.usage.slice(spec.name.length + 1));
  for (const [flags, help, repeatable] of spec.options) {
    if (repeatable) c.option(flags, help, collect, [] as string[]);
    else c.option(flags, help);
  }
  for (const a of spec.args) c.argument(a);
  let parsed: { args: Array<string | undefined>; o: O } | undefined;
  c.action((...values: unknown[]) => {
    parsed = { args: values.slice(0, spec.args.length) as Array<string | undefined>, o: values[spec.args.length] as O };
  });
  c.parse(argv, { from: 'user' });
  return parsed;
}
