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
