// Real test servers on 127.0.0.1 for the download tests: HTTP and HTTPS (certificate from a test
// CA made with the openssl CLI), files served with or without Range support, every request
// logged (so cache hits and resumes are proven by counts), and misbehaving routes: statuses,
// redirects and loops, a connection dropped mid-body, a lying Content-Length, a slow body.
// Also a CONNECT proxy that counts the tunnels it opens.

import { spawnSync } from 'child_process';
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as http from 'http';
import * as https from 'https';
import * as net from 'net';
import * as path from 'path';

/** A file route and how it misbehaves. */
export interface FileRoute {
  type: 'file';
  body: Buffer;
  /** Answer `Range: bytes=N-` with 206 and send Accept-Ranges. Default true. */
  ranges?: boolean;
  /** ETag (default: a strong tag from the body's hash; null: none). */
  etag?: string | null;
  /** Last-Modified (default a fixed date; null: none). */
  lastModified?: string | null;
  /** Send no Content-Length (chunked transfer). */
  chunked?: boolean;
  /** Declare this Content-Length (a lie when it is not the body's length), then close after the body. */
  declaredLength?: number;
  /** Close the connection after this many body bytes, for the first `dropTimes` requests. */
  dropAfter?: number;
  /** How many requests drop (default all). */
  dropTimes?: number;
  /**
   * Awaited before dropping: a test resolves it once its reader has taken the bytes sent (a
   * client discards bytes it had buffered but not read when the connection breaks).
   */
  beforeDrop?: () => Promise<void>;
  /** Awaited after the headers, before the first body byte (holds a download in progress). */
  beforeBody?: () => Promise<void>;
  /** Write the body in chunks of this size (default 64 KiB) ... */
  chunkSize?: number;
  /** ... waiting this many milliseconds before each. */
  delayMs?: number;
}

export type Route =
  | FileRoute
  | { type: 'status'; status: number }
  | { type: 'redirect'; to: string; status?: number }
  /** Answer only requests carrying this Authorization header; 401 otherwise. */
  | { type: 'auth'; authorization: string; route: FileRoute };

export interface LoggedRequest {
  path: string;
  range?: string;
  ifRange?: string;
  authorization?: string;
  status: number;
}

export interface TestServer {
  readonly port: number;
  /** `http(s)://127.0.0.1:<port><path>`. */
  url(p: string): string;
  readonly routes: Map<string, Route>;
  readonly log: LoggedRequest[];
  /** Requests for `p` (every status). */
  count(p: string): number;
  close(): Promise<void>;
}

function etagOf(body: Buffer): string {
  return `"${crypto.createHash('sha256').update(body).digest('hex').slice(0, 16)}"`;
}

const FIXED_DATE = 'Wed, 01 Jan 2025 00:00:00 GMT';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function serveFile(route: FileRoute, req: http.IncomingMessage, res: http.ServerResponse, entry: LoggedRequest, served: number): Promise<void> {
  const ranges = route.ranges !== false;
  const etag = route.etag === undefined ? etagOf(route.body) : route.etag;
  const lastModified = route.lastModified === undefined ? FIXED_DATE : route.lastModified;
  let start = 0;
  const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
  const ifRange = req.headers['if-range'];
  const rangeValid = range !== null && ranges && (ifRange === undefined || ifRange === etag || ifRange === lastModified);
  if (rangeValid) {
    start = Number(range![1]);
    if (start >= route.body.length) {
      entry.status = 416;
      res.writeHead(416, { 'content-range': `bytes */${route.body.length}`, connection: 'close' }).end();
      return;
    }
  }
  const body = route.body.subarray(start);
  const headers: string[] = [];
  entry.status = rangeValid ? 206 : 200;
  headers.push(`HTTP/1.1 ${rangeValid ? '206 Partial Content' : '200 OK'}`);
  if (rangeValid) headers.push(`Content-Range: bytes ${start}-${route.body.length - 1}/${route.body.length}`);
  if (ranges) headers.push('Accept-Ranges: bytes');
  if (etag !== null) headers.push(`ETag: ${etag}`);
  if (lastModified !== null) headers.push(`Last-Modified: ${lastModified}`);
  if (route.chunked) headers.push('Transfer-Encoding: chunked');
  else headers.push(`Content-Length: ${route.declaredLength ?? body.length}`);
  headers.push('Content-Type: application/octet-stream');
  // Raw writes, so that a route can lie and drop exactly as asked; one response per connection.
  headers.push('Connection: close');
  const sock = req.socket;
  sock.write(`${headers.join('\r\n')}\r\n\r\n`);
  if (route.beforeBody) await route.beforeBody();
  const drop = route.dropAfter !== undefined && served < (route.dropTimes ?? Infinity) ? route.dropAfter : undefined;
  const size = route.chunkSize ?? 65536;
  let sent = 0;
  while (sent < body.length) {
    if (route.delayMs) await sleep(route.delayMs);
    if (sock.destroyed) return;
    let piece = body.subarray(sent, Math.min(sent + size, body.length));
    if (drop !== undefined && sent + piece.length > drop) piece = piece.subarray(0, Math.max(0, drop - sent));
    if (piece.length > 0) {
      const ok = route.chunked ? sock.write(`${piece.length.toString(16)}\r\n`) && sock.write(piece) && sock.write('\r\n') : sock.write(piece);
      if (!ok) await new Promise((r) => sock.once('drain', r));
    }
    sent += piece.length;
    if (drop !== undefined && sent >= drop) {
      if (route.beforeDrop) await route.beforeDrop();
      sock.destroy();
      return;
    }
  }
  if (route.chunked) sock.write('0\r\n\r\n');
  sock.end();
}

/** TLS material for an HTTPS server: key, certificate, and the CA certificate that issued it. */
export interface TestCa {
  caFile: string;
  caPem: string;
  key: string;
  cert: string;
}

/** Why openssl cannot make a test CA here, or undefined when it can. */
export function opensslMissing(): string | undefined {
  const r = spawnSync('openssl', ['version'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : 'the openssl command is not installed';
}

function openssl(dir: string, args: string[]): void {
  const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr}`);
}

/** A test CA and a server certificate it issued for 127.0.0.1 and localhost, made with openssl in `dir`. */
export function makeTestCa(dir: string, name = 'qcow2 test CA'): TestCa {
  fs.mkdirSync(dir, { recursive: true });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl(dir, ['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  openssl(dir, ['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1']);
  fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  openssl(dir, ['x509', '-req', '-in', 'server.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.crt', '-days', '2', '-extfile', 'ext.cnf']);
  const read = (f: string) => fs.readFileSync(path.join(dir, f), 'utf8');
  return { caFile: path.join(dir, 'ca.crt'), caPem: read('ca.crt'), key: read('server.key'), cert: read('server.crt') };
}

/** Start a server on 127.0.0.1 (HTTPS when `tls` is given) serving `routes`. */
export async function startServer(routes: Record<string, Route> = {}, tls?: TestCa): Promise<TestServer> {
  const table = new Map(Object.entries(routes));
  const log: LoggedRequest[] = [];
  const servedCount = new WeakMap<Route, number>(); // per route object: a new route starts at 0
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const p = (req.url ?? '/').split('?')[0]!;
    const entry: LoggedRequest = { path: p, status: 0 };
    if (req.headers.range !== undefined) entry.range = req.headers.range;
    if (req.headers['if-range'] !== undefined) entry.ifRange = String(req.headers['if-range']);
    if (req.headers.authorization !== undefined) entry.authorization = req.headers.authorization;
    log.push(entry);
    let route = table.get(p);
    if (route?.type === 'auth') {
      if (req.headers.authorization !== route.authorization) {
        entry.status = 401;
        res.writeHead(401, { 'www-authenticate': 'Basic realm="test"' }).end();
        return;
      }
      route = route.route;
    }
    if (route === undefined) {
      entry.status = 404;
      res.writeHead(404).end('not found');
    } else if (route.type === 'status') {
      entry.status = route.status;
      res.writeHead(route.status).end(`status ${route.status}`);
    } else if (route.type === 'redirect') {
      entry.status = route.status ?? 302;
      res.writeHead(entry.status, { location: route.to }).end();
    } else if (route.type === 'file') {
      const n = servedCount.get(route) ?? 0;
      servedCount.set(route, n + 1);
      serveFile(route, req, res, entry, n).catch(() => req.socket.destroy());
    }
  };
  const server = tls ? https.createServer({ key: tls.key, cert: tls.cert }, handler) : http.createServer(handler);
  const sockets = new Set<net.Socket>();
  server.on(tls ? 'secureConnection' : 'connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const scheme = tls ? 'https' : 'http';
  return {
    port,
    url: (p) => `${scheme}://127.0.0.1:${port}${p}`,
    routes: table,
    log,
    count: (p) => log.filter((e) => e.path === p).length,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

export interface TestProxy {
  readonly url: string;
  /** `host:port` of each CONNECT tunnel opened. */
  readonly tunnels: string[];
  /** Absolute URLs of plain-HTTP requests forwarded. */
  readonly forwarded: string[];
  /** Proxy-Authorization headers seen. */
  readonly authorizations: string[];
  close(): Promise<void>;
}

/**
 * An HTTP proxy on 127.0.0.1: CONNECT tunnels, and plain-HTTP forwarding of absolute-form
 * requests, each logged. With `requireAuth`, anything without that Proxy-Authorization gets 407.
 */
export async function startProxy(requireAuth?: string): Promise<TestProxy> {
  const tunnels: string[] = [];
  const forwarded: string[] = [];
  const authorizations: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = http.createServer((req, res) => {
    if (req.headers['proxy-authorization']) authorizations.push(req.headers['proxy-authorization']);
    if (requireAuth !== undefined && req.headers['proxy-authorization'] !== requireAuth) {
      res.writeHead(407).end();
      return;
    }
    forwarded.push(req.url ?? '');
    const target = new URL(req.url ?? '');
    const headers = { ...req.headers };
    delete headers['proxy-authorization'];
    const up = http.request({ host: target.hostname, port: target.port, path: `${target.pathname}${target.search}`, headers }, (upRes) => {
      res.writeHead(upRes.statusCode ?? 502, upRes.headers);
      upRes.pipe(res);
      upRes.on('error', () => res.destroy());
    });
    up.on('error', () => res.destroy());
    up.end();
  });
  server.on('connect', (req: http.IncomingMessage, client: net.Socket, head: Buffer) => {
    if (req.headers['proxy-authorization']) authorizations.push(req.headers['proxy-authorization']);
    if (requireAuth !== undefined && req.headers['proxy-authorization'] !== requireAuth) {
      client.end('HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    tunnels.push(req.url ?? '');
    const [host, port] = (req.url ?? '').split(':');
    const upstream = net.connect(Number(port), host!, () => {
      client.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      if (head.length > 0) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    tunnels,
    forwarded,
    authorizations,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

/**
 * A progress callback and a promise resolved once it has seen `n` bytes (for `beforeDrop`).
 * Later calls pass through to `also`.
 */
export function whenReceived(n: number, also?: (p: { received: number }) => void): { onProgress: (p: { received: number }) => void; reached: () => Promise<void> } {
  let resolve!: () => void;
  const reached = new Promise<void>((r) => (resolve = r));
  return {
    onProgress: (p) => {
      if (p.received >= n) resolve();
      also?.(p);
    },
    reached: () => reached,
  };
}

/** Every file under `dir`, relative, sorted (to show nothing was left behind). */
export function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let names: string[];
    try {
      names = fs.readdirSync(d);
    } catch {
      return;
    }
    for (const n of names) {
      const p = path.join(d, n);
      if (fs.statSync(p).isDirectory()) walk(p);
      else out.push(path.relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

/** `sha256:<hex>` of bytes. */
export function sha256(body: Buffer): string {
  return `sha256:${crypto.createHash('sha256').update(body).digest('hex')}`;
}

/** `sha512:<hex>` of bytes. */
export function sha512(body: Buffer): string {
  return `sha512:${crypto.createHash('sha512').update(body).digest('hex')}`;
}

/** Deterministic pseudo-random bytes (not compressible), `n` of them, from `seed`. */
export function bytes(n: number, seed = 1): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}
