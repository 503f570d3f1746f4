// @ts-check
// Loaded with `node --require` before the qcow2 command line when qemu-iotests call it as
// qemu-img (see ./qemu-img). It undoes our deliberate differences from qemu-img, and only those:
//   - messages start `qcow2:` where qemu-img's start `qemu-img:`: mapped back on both streams,
//     in the order they are written;
//   - create and convert refuse an existing target (and create an existing data file) where
//     qemu-img truncates it: the file is removed first, as qemu-img would discard its contents.
// Everything else the command line prints or does reaches the tests unchanged.
'use strict';

const fs = require('fs');

/** @param {NodeJS.WriteStream} stream */
function mapMessagePrefix(stream) {
  const write = stream.write.bind(stream);
  let atLineStart = true;
  /** @param {string} text */
  const map = (text) => {
    const out = text.replace(/(^|\n)qcow2: /g, (m, nl, offset) => (offset === 0 && !atLineStart ? m : `${nl}qemu-img: `));
    if (text.length) atLineStart = text.endsWith('\n');
    return out;
  };
  /** @type {any} */ (stream).write = (/** @type {any} */ chunk, /** @type {any[]} */ ...rest) => {
    if (typeof chunk === 'string') return write(map(chunk), ...rest);
    if (chunk instanceof Uint8Array) return write(Buffer.from(map(Buffer.from(chunk).toString('utf8'))), ...rest);
    return write(chunk, ...rest);
  };
}

/**
 * getopt-style split of ARGS into options and positionals. `short` lists the short options that
 * take an argument, `long` the long ones; other options are flags.
 * @param {string[]} args @param {string} short @param {string[]} long
 */
function splitArgs(args, short, long) {
  /** @type {Array<[string, string | undefined]>} */
  const opts = [];
  /** @type {string[]} */
  const positionals = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--') { positionals.push(...args.slice(i + 1)); break; }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq < 0 ? undefined : eq);
      opts.push([name, eq >= 0 ? a.slice(eq + 1) : long.includes(name) ? args[++i] : undefined]);
    } else if (a.startsWith('-') && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        if (short.includes(a[j])) {
          opts.push([a[j], j + 1 < a.length ? a.slice(j + 1) : args[++i]]);
          break;
        }
        opts.push([a[j], undefined]);
      }
    } else {
      positionals.push(a);
    }
  }
  return { opts, positionals };
}

/** The items of a qemu `-o` list (`,,` is a literal comma). @param {string} list */
function optionItems(list) {
  return list.replace(/,,/g, '\0').split(',').map((item) => item.replace(/\0/g, ','));
}

/** The value of KEY in a `-o` list (the last one given). @param {string} list @param {string} key */
function optionValue(list, key) {
  let found;
  for (const item of optionItems(list)) {
    const eq = item.indexOf('=');
    if (eq >= 0 && item.slice(0, eq) === key) found = item.slice(eq + 1);
  }
  return found;
}

/** The `-o` lists given. @param {Array<[string, string | undefined]>} opts */
function optionLists(opts) {
  return opts.filter(([k]) => k === 'o').map(([, v]) => v ?? '');
}

/** `-o help` (or `?`): qemu-img lists the options and touches no file. @param {string} list */
function asksHelp(list) {
  return optionItems(list).some((item) => item === 'help' || item === '?');
}

/** Remove FILE if it is a regular file (never a folder, device or link). @param {string | undefined} file */
function discard(file) {
  if (!file || /^[a-z+]+:/i.test(file)) return; // protocols and json: names are not files
  try {
    if (fs.lstatSync(file).isFile()) fs.unlinkSync(file);
  } catch {
    // absent: nothing to discard
  }
}

/** @param {string[]} args */
function discardTargets(args) {
  const [cmd, ...rest] = args;
  if (cmd === 'create') {
    const { opts, positionals } = splitArgs(rest, 'Fbfo', ['object']);
    const lists = optionLists(opts);
    if (lists.some(asksHelp)) return;
    const target = positionals[0];
    const backing = opts.find(([k]) => k === 'b')?.[1] ?? lists.map((l) => optionValue(l, 'backing_file')).find((v) => v);
    // qemu-img refuses a backing file that is the image itself before it touches anything.
    if (target === undefined || backing === target) return;
    discard(target);
    for (const l of lists) discard(optionValue(l, 'data_file'));
  } else if (cmd === 'convert') {
    const { opts, positionals } = splitArgs(rest, 'fOBolSmtTr', ['object']);
    // -n: qemu-img writes into the existing target; --target-image-opts: the target is not a file name.
    if (opts.some(([k]) => k === 'n' || k === 'target-image-opts') || optionLists(opts).some(asksHelp)) return;
    if (positionals.length < 2) return;
    discard(positionals[positionals.length - 1]);
  }
}

mapMessagePrefix(process.stdout);
mapMessagePrefix(process.stderr);
discardTargets(process.argv.slice(2));
