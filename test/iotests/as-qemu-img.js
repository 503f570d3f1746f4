// @ts-check
// Loaded with `node --require` before the qcow2 command line when qemu-iotests call it as
// qemu-img (see ./qemu-img). It undoes our deliberate differences from qemu-img, and only those:
//   - messages start `qcow2:` where qemu-img's start `qemu-img:`: mapped back on fds 1 and 2,
//     in the order they are written;
//   - create and convert refuse an existing target (and create an existing data file) where
//     qemu-img truncates it: the file is removed first, as qemu-img would discard its contents.
// Everything else the command line prints or does reaches the tests unchanged.
'use strict';

const fs = require('fs');

/** Per file descriptor: whether the next byte written starts a line. */
const atLineStart = { 1: true, 2: true };

/** `qcow2: ` at the start of a line becomes `qemu-img: `. @param {1 | 2} fd @param {string} text */
function mapText(fd, text) {
  const out = text.replace(/(^|\n)qcow2: /g, (m, nl, offset) => (offset === 0 && !atLineStart[fd] ? m : `${nl}qemu-img: `));
  if (text.length) atLineStart[fd] = text.endsWith('\n');
  return out;
}

/**
 * The command line writes fds 1 and 2 with fs.writeSync; commander and progress bars may use
 * process.stdout/stderr. Both are mapped (a stream that ends in fs.writeSync maps twice, which
 * changes nothing the second time).
 */
function mapMessagePrefix() {
  const writeSync = fs.writeSync;
  /** @type {any} */ (fs).writeSync = (/** @type {number} */ fd, /** @type {any} */ data, /** @type {any[]} */ ...rest) => {
    if (fd !== 1 && fd !== 2) return writeSync(fd, data, ...rest);
    let text, consumed;
    if (typeof data === 'string') {
      text = data;
      consumed = Buffer.byteLength(data, typeof rest[1] === 'string' ? rest[1] : 'utf8');
    } else {
      const off = typeof rest[0] === 'number' ? rest[0] : 0;
      const len = typeof rest[1] === 'number' ? rest[1] : data.byteLength - off;
      text = Buffer.from(data.buffer, data.byteOffset + off, len).toString('utf8');
      consumed = len;
    }
    const mapped = Buffer.from(mapText(fd, text), 'utf8');
    for (let o = 0; o < mapped.length;) {
      try {
        o += writeSync(fd, mapped, o, mapped.length - o);
      } catch (e) {
        if (/** @type {NodeJS.ErrnoException} */ (e).code !== 'EAGAIN') throw e;
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5); // a full pipe: wait for its reader
      }
    }
    return consumed; // the caller counts in its own bytes
  };
  for (const [fd, stream] of /** @type {Array<[1 | 2, NodeJS.WriteStream]>} */ ([[1, process.stdout], [2, process.stderr]])) {
    const write = stream.write.bind(stream);
    /** @type {any} */ (stream).write = (/** @type {any} */ chunk, /** @type {any[]} */ ...rest) => {
      if (typeof chunk === 'string') return write(mapText(fd, chunk), ...rest);
      if (chunk instanceof Uint8Array) return write(Buffer.from(mapText(fd, Buffer.from(chunk).toString('utf8'))), ...rest);
      return write(chunk, ...rest);
    };
  }
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

mapMessagePrefix();
discardTargets(process.argv.slice(2));
