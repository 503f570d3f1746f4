// The one argument quoter for commands run over SSH exec. sshd hands the command string to the
// user's login shell (`$SHELL -c STRING`), so every argument is quoted for a POSIX shell: wrapped
// in single quotes, inside which nothing is special, with each ' written as '\'' (close, an
// escaped quote, reopen). Spaces, newlines, quotes, $(), `, globs, commas, `json:` and a leading
// dash all reach the program as one unchanged argv element. A leading dash is still an option to
// the program that receives it: quoting cannot change that, the caller must (`--`, or "./-x").
// Login shells that are not POSIX (csh, fish) are not supported.

import { Qcow2Error } from '../../model/errors';

/** Quote one argument for a POSIX shell. */
export function shellQuote(arg: string): string {
  if (arg.includes('\0')) {
    // argv strings are C strings: a NUL cannot reach the program.
    throw new Qcow2Error('INVALID_OPTION', `an argument contains a NUL character, which no remote program can receive: ${JSON.stringify(arg.slice(0, 64))}`);
  }
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(arg) && !arg.startsWith('-') && !arg.startsWith('=')) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/** A command line for `$SHELL -c`: each element of argv quoted, joined by spaces. */
export function shellCommand(argv: readonly string[]): string {
  if (argv.length === 0) throw new Qcow2Error('INVALID_OPTION', 'no command to run');
  return argv.map(shellQuote).join(' ');
}
