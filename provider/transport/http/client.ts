// One HTTP(S) GET as downloads need it, on Node's http and https: proxies from the environment
// (proxy.ts), the system's trusted CAs, redirects followed by hand (a limit, loops named,
// credentials kept to their origin), identity encoding, timeouts for headers and for a body
// that stalls, and network failures turned into messages a user can act on.
//
// Not undici: its 6.x and 7.x lines (the ones for Node 20) throw an uncatchable AssertionError
// (`assert(!this.paused)` in Parser.finish) when a server closes the connection after a body
// the reader is still applying backpressure to (nodejs/undici#5360, fixed in 8.x, which needs
// Node 22). Every `Connection: close` server could crash the process that way.

import * as http from 'http';
import type { IncomingHttpHeaders } from 'http';
import * as https from 'https';
import * as net from 'net';
import * as tls from 'tls';
import { Qcow2Error } from '../../model/errors';
import { connectTunnel, proxyAuthorization, proxyFor } from './proxy';
import { trustedCertificates } from './tls';
import { redactUrl } from './url';

/** How downloads reach servers. Every member is optional. */
export interface HttpOptions {
  /** Environment for HTTPS_PROXY / HTTP_PROXY / NO_PROXY (either case), SSL_CERT_FILE, NODE_EXTRA_CA_CERTS. Default `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** More CA certificates (PEM) to trust, besides the system's and NODE_EXTRA_CA_CERTS. */
  ca?: string | readonly string[];
  /** Redirects followed per request before giving up. Default 10. */
  maxRedirects?: number;
  /** Milliseconds to connect and receive response headers. Default 60 000. */
  headersTimeoutMs?: number;
  /** Milliseconds without a byte of body before the connection counts as dropped. Default 60 000. */
  bodyTimeoutMs?: number;
  /** Aborts the download. */
  signal?: AbortSignal;
}

/** A response with a body, after redirects. */
export interface OpenResponse {
  /** The URL that answered (after redirects). */
  readonly url: URL;
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  /** The body, unread; a stall past bodyTimeoutMs fails it. */
  readonly body: http.IncomingMessage;
}

const DEFAULT_MAX_REDIRECTS = 10;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/** A header as one string. */
export function header(headers: IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function timeoutError(code: 'HEADERS_TIMEOUT' | 'BODY_TIMEOUT'): Error {
  return Object.assign(new Error(code === 'HEADERS_TIMEOUT' ? 'headers timeout' : 'body timeout'), { code });
}

/** HTTP GETs for one download; close() when done. */
export class HttpClient {
  private readonly env: NodeJS.ProcessEnv;
  private readonly ca: string[];
  private readonly httpAgent = new http.Agent({ keepAlive: true });
  private readonly httpsAgent: https.Agent;
  private readonly maxRedirects: number;
  private readonly headersTimeout: number;
  private readonly bodyTimeout: number;

  constructor(private readonly options: HttpOptions = {}) {
    this.env = options.env ?? process.env;
    this.ca = trustedCertificates({ env: this.env, ...(options.ca !== undefined ? { ca: options.ca } : {}) });
    this.httpsAgent = new https.Agent({ keepAlive: true, ca: this.ca });
    this.maxRedirects = options.maxRedirects ?? DEFAULT_MAX_REDIRECTS;
    this.headersTimeout = options.headersTimeoutMs ?? 60_000;
    this.bodyTimeout = options.bodyTimeoutMs ?? 60_000;
  }

  /**
   * GET `url` with `headers`, following redirects. Returns any final status with its body
   * unread; the caller reads or discards it. User info in the URL becomes Basic authorization
   * for the URL's own origin only (it is not sent after a redirect to another origin).
   */
  async get(url: URL, headers: Record<string, string> = {}): Promise<OpenResponse> {
    const origin = url.origin;
    const auth =
      url.username !== '' || url.password !== ''
        ? `Basic ${Buffer.from(`${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`).toString('base64')}`
        : undefined;
    const seen = new Set<string>();
    let current = stripCredentials(url);
    for (let hop = 0; ; hop++) {
      seen.add(current.href);
      const h: Record<string, string> = { 'accept-encoding': 'identity', 'user-agent': 'pulumi-qcow2', ...headers };
      if (auth !== undefined && current.origin === origin) h.authorization = auth;
      let res: http.IncomingMessage;
      try {
        res = await this.request(current, h);
      } catch (e) {
        throw networkError(e, current);
      }
      const location = header(res.headers, 'location');
      if (!REDIRECTS.has(res.statusCode ?? 0) || location === undefined) {
        return { url: current, status: res.statusCode ?? 0, headers: res.headers, body: res };
      }
      discard(res);
      let next: URL;
      try {
        next = new URL(location, current);
      } catch {
        throw new Qcow2Error('HTTP', `${redactUrl(current)} redirects to an invalid URL`, { file: redactUrl(url) });
      }
      if (next.protocol !== 'http:' && next.protocol !== 'https:') {
        throw new Qcow2Error('HTTP', `${redactUrl(current)} redirects to ${next.protocol}//, which cannot be downloaded`, { file: redactUrl(url) });
      }
      next = stripCredentials(next);
      if (seen.has(next.href)) {
        throw new Qcow2Error('HTTP', `Redirect loop: ${redactUrl(current)} redirects back to ${redactUrl(next)}, which redirected before; the server is misconfigured, or the URL is wrong`, {
          file: redactUrl(url),
        });
      }
      if (hop + 1 > this.maxRedirects) {
        throw new Qcow2Error('HTTP', `Too many redirects (more than ${this.maxRedirects}) starting at ${redactUrl(url)}; the last went to ${redactUrl(next)}`, {
          file: redactUrl(url),
        });
      }
      current = next;
    }
  }

  /** One request: direct, through a CONNECT tunnel (https), or to a forward proxy (http). */
  private async request(url: URL, headers: Record<string, string>): Promise<http.IncomingMessage> {
    const proxy = proxyFor(url, this.env);
    const signal = this.options.signal;
    const common = { method: 'GET', headers, ...(signal !== undefined ? { signal } : {}) };
    let req: http.ClientRequest;
    if (proxy === undefined) {
      req = (url.protocol === 'https:' ? https : http).request(url, { ...common, agent: url.protocol === 'https:' ? this.httpsAgent : this.httpAgent });
    } else if (url.protocol === 'http:') {
      // A forward proxy: the absolute URL as the request target.
      req = (proxy.protocol === 'https:' ? https : http).request({
        ...common,
        host: proxy.hostname.replace(/^\[|\]$/g, ''),
        port: proxy.port || (proxy.protocol === 'https:' ? 443 : 80),
        path: url.href,
        headers: { ...headers, host: url.host, ...proxyAuthorization(proxy) },
        agent: false,
        ...(proxy.protocol === 'https:' ? { ca: this.ca } : {}),
      });
    } else {
      const tunnel = await connectTunnel(proxy, url, { ca: this.ca, timeoutMs: this.headersTimeout, ...(signal !== undefined ? { signal } : {}) });
      const host = url.hostname.replace(/^\[|\]$/g, '');
      const secure = tls.connect({ socket: tunnel, ca: this.ca, ...(net.isIP(host) === 0 ? { servername: host } : {}), ALPNProtocols: ['http/1.1'] });
      // The request reports the socket's errors; this listener only keeps one that comes before
      // the request has the socket from going unhandled.
      secure.on('error', () => undefined);
      // No `agent` at all: with one (even `false`), Node connects by itself and ignores createConnection.
      req = https.request(url, { ...common, createConnection: () => secure });
    }
    return new Promise((resolve, reject) => {
      req.setTimeout(this.headersTimeout, () => req.destroy(timeoutError('HEADERS_TIMEOUT')));
      // Errors after the response (a broken socket once the body is read) must not go unheard.
      req.on('error', reject);
      req.on('response', (res) => {
        req.setTimeout(0);
        res.setTimeout(this.bodyTimeout, () => res.destroy(timeoutError('BODY_TIMEOUT')));
        resolve(res);
      });
      req.end();
    });
  }

  close(): void {
    this.httpAgent.destroy();
    this.httpsAgent.destroy();
  }
}

function stripCredentials(url: URL): URL {
  const u = new URL(url.href);
  u.username = '';
  u.password = '';
  u.hash = '';
  return u;
}

/** Drop a body we do not use (its connection is not reused). */
export function discard(body: http.IncomingMessage): void {
  body.on('error', () => undefined);
  body.destroy();
}

/** The `code` of a network error, looking through causes. */
function errorCode(e: unknown): string {
  for (let x: unknown = e, depth = 0; x !== undefined && x !== null && depth < 5; depth++) {
    const code = (x as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    x = (x as { cause?: unknown }).cause;
  }
  return '';
}

const TLS_TRUST = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
]);

/** Errors after which a request may be tried again (the connection broke, nothing refused it). */
export function isTransient(e: unknown): boolean {
  if (Qcow2Error.isInstance(e)) return transientErrors.has(e);
  return TRANSIENT.has(errorCode(e));
}

/** CONNECTION errors raised for a broken connection (a retry may succeed). */
const transientErrors = new WeakSet<object>();

const TRANSIENT = new Set(['BODY_TIMEOUT', 'HEADERS_TIMEOUT', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'ERR_STREAM_PREMATURE_CLOSE']);

/** A transient CONNECTION error: the connection broke and a retry may succeed. */
export function transientError(message: string, url: URL, cause?: unknown): Qcow2Error {
  const e = new Qcow2Error('CONNECTION', message, { file: redactUrl(url), ...(cause !== undefined ? { cause } : {}) });
  transientErrors.add(e);
  return e;
}

/**
 * A network failure of `url` in words, never errno text: HOST_KEY when the server's certificate
 * is not trusted (nothing was sent), CONNECTION for everything else (not reached, or lost).
 */
export function networkError(e: unknown, url: URL): Qcow2Error {
  if (Qcow2Error.isInstance(e)) return e;
  const where = redactUrl(url);
  const host = url.host;
  const code = errorCode(e);
  let what: string;
  if (code === 'ECONNREFUSED') what = `Could not connect to ${host}: connection refused`;
  else if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') what = `Could not resolve the host name ${url.hostname}`;
  else if (code === 'ETIMEDOUT') what = `Timed out connecting to ${host}`;
  else if (code === 'HEADERS_TIMEOUT') what = `${host} did not answer in time`;
  else if (code === 'BODY_TIMEOUT') what = `${host} stopped sending data`;
  else if (code === 'ABORT_ERR') what = 'The download was aborted';
  else if (TLS_TRUST.has(code)) {
    what = `The certificate of ${host} is not trusted (${code}); if it is issued by a private CA, add that CA's certificate to the system store or name its PEM file in NODE_EXTRA_CA_CERTS`;
  } else if (code === 'CERT_HAS_EXPIRED') what = `The certificate of ${host} has expired`;
  else if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') what = `The certificate of ${host} is not valid for that name`;
  else if (code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS') || /certificate/i.test(code)) what = `TLS with ${host} failed (${code})`;
  else if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'ERR_STREAM_PREMATURE_CLOSE') what = `The connection to ${host} was closed`;
  else what = `Download failed (${code !== '' ? code : 'network error'})`;
  const tlsIdentity = TLS_TRUST.has(code) || code === 'CERT_HAS_EXPIRED' || code === 'ERR_TLS_CERT_ALTNAME_INVALID';
  const err = new Qcow2Error(tlsIdentity ? 'HOST_KEY' : 'CONNECTION', `${what}: ${where}`, { file: where, cause: e });
  if (TRANSIENT.has(code)) transientErrors.add(err);
  return err;
}

/** A non-success HTTP status as an error naming the URL: AUTH for 401 and 407, else HTTP. */
export function statusError(status: number, url: URL, requested: URL): Qcow2Error {
  const names: Record<number, string> = {
    400: 'Bad Request',
    401: 'Unauthorized',
    403: 'Forbidden',
    404: 'Not Found',
    407: 'Proxy Authentication Required',
    410: 'Gone',
    429: 'Too Many Requests',
    500: 'Internal Server Error',
    502: 'Bad Gateway',
    503: 'Service Unavailable',
    504: 'Gateway Timeout',
  };
  const name = names[status] !== undefined ? ` ${names[status]}` : '';
  const hint =
    status === 404 || status === 410
      ? 'check the URL'
      : status === 407
        ? 'the proxy wants credentials: give them in the proxy URL (http://user:password@proxy:port)'
        : status === 401 || status === 403
        ? 'the server needs credentials or refuses this client'
        : status >= 500
          ? 'the server failed; try again later'
          : 'the server refused the request';
  const via = url.href !== requested.href ? ` (redirected from ${redactUrl(requested)})` : '';
  return new Qcow2Error(status === 401 || status === 407 ? 'AUTH' : 'HTTP', `HTTP ${status}${name} from ${redactUrl(url)}${via}: ${hint}`, { file: redactUrl(requested) });
}
