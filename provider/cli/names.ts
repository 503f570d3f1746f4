// Image names as qemu-img takes them on its command line: a plain file name, `file:NAME`, a
// `json:{...}` block-node description, or (with --image-opts) a QemuOpts list such as
// `driver=qcow2,file.driver=file,file.filename=NAME`. Each becomes a local file and, where the
// name says, its format. A URL in qemu-img's ssh driver syntax, ssh://[user@]host[:port]/path,
// names a file on a remote host (cli/remote.ts logs in). Any other protocol (nbd, http, ...) or
// driver (blkdebug, quorum, ...) is refused by name, never opened, and so is anything the parser
// does not know. No I/O here.

import { Qcow2Error } from '../model/errors';
import { parseOptionList } from '../model/qemu-opts';

/** The host of an ssh:// name, as the URL gives it (the user defaults to the local one). */
export interface RemoteHost {
  host: string;
  port?: number;
  user?: string;
}

/** An image file, as a command names it. */
export interface ImageName {
  /** The file to open (on `remote` when it is set). */
  path: string;
  /** The host the file is on; undefined for this machine. */
  remote?: RemoteHost;
  /** The format the name states (`driver`), when it states one. */
  format?: 'qcow2' | 'raw';
  /** The name qemu-img prints for the image (its bs->filename). */
  display: string;
}

// Protocols and filter drivers qemu-img 7.2 knows that this tool does not open: refused by name.
const OTHER_DRIVERS = new Set(
  ('blkdebug blklogwrites blkreplay blkverify bochs cloop compress copy-before-write copy-on-read dmg ftp ftps gluster ' +
    'host_cdrom host_device http https iscsi iser luks nbd nfs null-aio null-co nvme parallels preallocate qcow qed ' +
    'quorum rbd replication snapshot-access ssh throttle vdi vhdx vmdk vpc vvfat').split(' '),
);

/** qcow2 runtime options that size QEMU's caches (accepted, no effect here: this engine has no such caches). */
const QCOW2_CACHE_OPTIONS = ['cache-size', 'l2-cache-size', 'l2-cache-entry-size', 'refcount-cache-size', 'cache-clean-interval'];

const refuse = (message: string) => new Qcow2Error('UNSUPPORTED', message, { property: 'filename' });

/** path_has_protocol: a ':' before any '/'. */
function protocolOf(name: string): string | undefined {
  const stop = name.search(/[:/]/);
  return stop >= 0 && name[stop] === ':' ? name.slice(0, stop) : undefined;
}

/** How qemu prints a plain file's name: one that would read as a protocol gets `./` in front. */
function displayOf(file: string): string {
  return protocolOf(file) !== undefined ? `./${file}` : file;
}

const SSH_AS_URL = 'an image on a remote host is named by a URL only: write ssh://[user@]host[:port]/absolute/path';

function unsupportedDriver(driver: string): Qcow2Error {
  if (driver === 'ssh') return refuse(`Driver 'ssh' is not supported here: ${SSH_AS_URL}`);
  return OTHER_DRIVERS.has(driver)
    ? refuse(`Driver '${driver}' is not supported: this tool opens local qcow2 and raw files only`)
    : refuse(`Unknown driver '${driver}'`);
}

/**
 * A block-node description (from json: or --image-opts, flattened to dotted keys) as a local
 * file: `driver` qcow2|raw|file, and for qcow2/raw a `file` node with `driver: file` and
 * `filename`. Any other key is refused, so nothing is silently ignored.
 */
function fromOptions(opts: Map<string, string>, source: string): ImageName {
  const driver = opts.get('driver');
  const known = new Set(['driver']);
  let path: string | undefined;
  let format: 'qcow2' | 'raw' | undefined;
  if (driver === undefined) throw refuse(`Parameter 'driver' is missing in ${source}`);
  if (driver === 'file') {
    path = opts.get('filename');
    known.add('filename');
  } else if (driver === 'qcow2' || driver === 'raw') {
    format = driver;
    // The sizes of QEMU's qcow2 metadata caches tune its memory and speed, never a result.
    if (driver === 'qcow2') for (const k of QCOW2_CACHE_OPTIONS) known.add(k);
    // `file` as a string would name another block node (a reference), which qemu-img cannot have here.
    const fd = opts.get('file.driver');
    if (fd !== undefined && fd !== 'file') throw unsupportedDriver(fd);
    path = opts.get('file.filename');
    known.add('file.driver').add('file.filename');
  } else {
    throw unsupportedDriver(driver);
  }
  for (const k of opts.keys()) {
    if (!known.has(k)) throw refuse(`Option '${k}' in ${source} is not supported: only a local file (driver, file.driver=file, file.filename) can be named`);
  }
  if (path === undefined || path === '') throw refuse(`${source} names no file: give file.filename (or filename with driver=file)`);
  const out: ImageName = { path, display: displayOf(path) };
  if (format !== undefined) out.format = format;
  return out;
}

/** An image name from the command line; `imageOpts` for --image-opts. Throws UNSUPPORTED with the reason. */
export function parseImageName(name: string, imageOpts = false): ImageName {
  if (imageOpts) {
    const opts = new Map<string, string>();
    for (const [k, v] of parseOptionList(name)) {
      if (v === undefined) throw refuse(`Invalid option '${k}' in --image-opts: expected key=value`);
      opts.set(k, v);
    }
    return fromOptions(opts, '--image-opts');
  }
  if (name.startsWith('ssh://')) return fromSshUrl(name);
  if (name.startsWith('json:')) return fromOptions(flatten(parseQemuJson(name.slice(5))), 'the json: file name');
  if (name.startsWith('file:')) {
    const path = name.slice(5);
    return { path, display: displayOf(path) };
  }
  const protocol = protocolOf(name);
  if (protocol !== undefined) {
    if (protocol === 'ssh') throw refuse(`Protocol 'ssh' is not supported in this form: ${SSH_AS_URL}`);
    throw OTHER_DRIVERS.has(protocol)
      ? refuse(`Protocol '${protocol}' is not supported: this tool opens local files only (prefix file: for a file whose name contains ':')`)
      : refuse(`Unknown protocol '${protocol}'`);
  }
  return { path: name, display: name };
}

function badUrl(name: string, why: string): Qcow2Error {
  return refuse(`'${name}' is not an image on a remote host (${why}): write ssh://[user@]host[:port]/absolute/path`);
}

/** ssh://[user@]host[:port]/absolute/path, percent-escapes decoded (`%20` is a space). */
function fromSshUrl(name: string): ImageName {
  let u: URL;
  try {
    u = new URL(name);
  } catch {
    throw badUrl(name, 'not a URL');
  }
  if (u.search !== '' || u.hash !== '') {
    throw badUrl(name, "options after '?' are not supported: host keys are always checked against ~/.ssh/known_hosts, and a '?' or '#' in a file name is written %3F or %23");
  }
  if (u.password !== '') throw badUrl(name, 'a password in the URL is not accepted: use the SSH agent or a key in ~/.ssh');
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === '') throw badUrl(name, 'no host');
  let path: string;
  let user: string | undefined;
  try {
    path = decodeURIComponent(u.pathname);
    if (u.username !== '') user = decodeURIComponent(u.username);
  } catch {
    throw badUrl(name, 'a bad %-escape');
  }
  if (!path.startsWith('/') || path === '/') throw badUrl(name, 'the path must be absolute and name a file');
  const remote: RemoteHost = { host };
  if (u.port !== '') remote.port = Number(u.port);
  if (user !== undefined) remote.user = user;
  return { path, remote, display: name };
}

type Json = string | number | boolean | null | Json[] | { [k: string]: Json };

/** Dotted keys of a JSON object, as QEMU flattens block options (`file.filename`). Arrays are refused. */
function flatten(v: Json, prefix = '', out = new Map<string, string>()): Map<string, string> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) {
    if (prefix === '') throw refuse('A json: file name must be a JSON object');
    if (Array.isArray(v) || v === null) throw refuse(`Option '${prefix}' in the json: file name is not supported`);
    out.set(prefix, String(v));
    return out;
  }
  for (const [k, x] of Object.entries(v)) flatten(x, prefix ? `${prefix}.${k}` : k, out);
  return out;
}

/**
 * QEMU's JSON dialect (qobject/json-parser.c): JSON with single-quoted strings as well. Strict:
 * anything else (trailing text, duplicate keys, bad escapes, deep nesting) is an error.
 */
export function parseQemuJson(text: string): Json {
  let i = 0;
  const bad = (what: string): never => { throw refuse(`Could not parse the json: file name: ${what} at offset ${i}`); };
  const ws = () => { while (i < text.length && ' \t\n\r'.includes(text[i]!)) i++; };
  const str = (): string => {
    const q = text[i++];
    let s = '';
    for (;;) {
      if (i >= text.length) bad('unterminated string');
      const c = text[i++]!;
      if (c === q) return s;
      if (c !== '\\') { s += c; continue; }
      const e = text[i++];
      const map: Record<string, string> = { '"': '"', "'": "'", '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };
      if (e !== undefined && Object.hasOwn(map, e)) s += map[e];
      else if (e === 'u' && /^[0-9a-fA-F]{4}$/.test(text.slice(i, i + 4))) { s += String.fromCharCode(parseInt(text.slice(i, i + 4), 16)); i += 4; }
      else bad('invalid escape');
    }
  };
  const value = (depth: number): Json => {
    if (depth > 32) bad('nesting too deep');
    ws();
    const c = text[i];
    if (c === '{') {
      i++;
      const o: { [k: string]: Json } = {};
      ws();
      if (text[i] === '}') { i++; return o; }
      for (;;) {
        ws();
        if (text[i] !== '"' && text[i] !== "'") bad('expected a key');
        const k = str();
        if (Object.hasOwn(o, k)) bad(`duplicate key '${k}'`);
        ws();
        if (text[i++] !== ':') bad("expected ':'");
        o[k] = value(depth + 1);
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === '}') { i++; return o; }
        bad("expected ',' or '}'");
      }
    }
    if (c === '[') {
      i++;
      const a: Json[] = [];
      ws();
      if (text[i] === ']') { i++; return a; }
      for (;;) {
        a.push(value(depth + 1));
        ws();
        if (text[i] === ',') { i++; continue; }
        if (text[i] === ']') { i++; return a; }
        bad("expected ',' or ']'");
      }
    }
    if (c === '"' || c === "'") return str();
    const lit = /^(true|false|null|-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)/.exec(text.slice(i));
    if (!lit) return bad('unexpected character');
    i += lit[0].length;
    return lit[0] === 'true' ? true : lit[0] === 'false' ? false : lit[0] === 'null' ? null : Number(lit[0]);
  };
  const v = value(0);
  ws();
  if (i !== text.length) bad('trailing text');
  return v;
}
