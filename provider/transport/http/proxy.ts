// Proxies from the environment, as curl reads them: HTTPS_PROXY for https:// URLs, HTTP_PROXY
// for http:// (lower case first), NO_PROXY for the hosts that go direct; and the CONNECT tunnel
// that carries an https:// download through a proxy.

import * as http from 'http';
import * as https from 'https';
import * as net from 'net';
import { Qcow2Error } from '../../model/errors';
import { redactUrl } from './url';

/** The proxy an environment sets for a URL, or undefined when it goes direct. */
export function proxyFor(url: URL, env: NodeJS.ProcessEnv): URL | undefined {
  const get = (name: string) => env[name.toLowerCase()] ?? env[name.toUpperCase()] ?? '';
  const raw = url.protocol === 'https:' ? get('https_proxy') : get('http_proxy');
  if (raw === '') return undefined;
  if (bypassed(url, get('no_proxy'))) return undefined;
  let proxy: URL;
  try {
    proxy = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(raw) ? raw : `http://${raw}`);
  } catch {
    throw new Qcow2Error('INVALID_OPTION', `The proxy set by ${url.protocol === 'https:' ? 'HTTPS_PROXY' : 'HTTP_PROXY'} is not a URL`, {
      property: url.protocol === 'https:' ? 'HTTPS_PROXY' : 'HTTP_PROXY',
    });
  }
  if (proxy.protocol !== 'http:' && proxy.protocol !== 'https:') {
    throw new Qcow2Error('UNSUPPORTED', `Only http:// and https:// proxies are supported, not ${redactUrl(proxy)}`, {
      property: url.protocol === 'https:' ? 'HTTPS_PROXY' : 'HTTP_PROXY',
    });
  }
  return proxy;
}

function bareHost(hostname: string): string {
  return hostname.replace(/^\[|\]$/g, '').toLowerCase();
}

function ipv4(text: string): number | undefined {
  if (net.isIPv4(text)) return text.split('.').reduce((n, part) => n * 256 + Number(part), 0);
  return undefined;
}

/**
 * Whether NO_PROXY exempts `url`: `*` exempts all; an entry matches its host and, as a domain,
 * every name under it (a leading `.` or `*.` is ignored); `host:port` only that port;
 * `a.b.c.d/n` an IPv4 range.
 */
export function bypassed(url: URL, noProxy: string): boolean {
  const host = bareHost(url.hostname);
  const port = Number(url.port || (url.protocol === 'https:' ? 443 : 80));
  for (let entry of noProxy.split(/[\s,]+/)) {
    entry = entry.trim().toLowerCase();
    if (entry === '') continue;
    if (entry === '*') return true;
    let entryPort: number | undefined;
    const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(entry);
    if (m !== null) {
      entry = m[1]!;
      entryPort = Number(m[2]);
    }
    if (entryPort !== undefined && entryPort !== port) continue;
    entry = bareHost(entry.replace(/^\*?\./, ''));
    const cidr = /^([\d.]+)\/(\d+)$/.exec(entry);
    if (cidr !== null) {
      const base = ipv4(cidr[1]!);
      const bits = Number(cidr[2]);
      const addr = ipv4(host);
      if (base !== undefined && addr !== undefined && bits <= 32) {
        const size = 2 ** (32 - bits);
        if (Math.floor(addr / size) === Math.floor(base / size)) return true;
      }
      continue;
    }
    if (host === entry || host.endsWith(`.${entry}`)) return true;
  }
  return false;
}

/** `Proxy-Authorization` for a proxy URL with user info. */
export function proxyAuthorization(proxy: URL): Record<string, string> {
  if (proxy.username === '' && proxy.password === '') return {};
  return { 'proxy-authorization': `Basic ${Buffer.from(`${decodeURIComponent(proxy.username)}:${decodeURIComponent(proxy.password)}`).toString('base64')}` };
}

/**
 * A socket to `target` through `proxy` (HTTP CONNECT). Fails naming the proxy's answer when it
 * refuses: AUTH for 407 (credentials wanted), CONNECTION otherwise.
 */
export function connectTunnel(proxy: URL, target: URL, options: { ca: string[]; signal?: AbortSignal; timeoutMs: number }): Promise<net.Socket> {
  const port = target.port || (target.protocol === 'https:' ? '443' : '80');
  const authority = `${target.hostname}:${port}`;
  return new Promise((resolve, reject) => {
    const lib = proxy.protocol === 'https:' ? https : http;
    const req = lib.request({
      host: bareHost(proxy.hostname),
      port: proxy.port || (proxy.protocol === 'https:' ? 443 : 80),
      method: 'CONNECT',
      path: authority,
      headers: { host: authority, ...proxyAuthorization(proxy) },
      agent: false,
      ...(proxy.protocol === 'https:' ? { ca: options.ca } : {}),
      ...(options.signal !== undefined ? { signal: options.signal } : {}),
    });
    req.setTimeout(options.timeoutMs, () => req.destroy(Object.assign(new Error('proxy timeout'), { code: 'HEADERS_TIMEOUT' })));
    req.on('connect', (res: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
      req.setTimeout(0);
      if (res.statusCode !== 200) {
        socket.destroy();
        reject(
          new Qcow2Error(res.statusCode === 407 ? 'AUTH' : 'CONNECTION', `The proxy ${redactUrl(proxy)} refused a tunnel to ${target.host} (HTTP ${res.statusCode}); check HTTPS_PROXY/HTTP_PROXY and NO_PROXY`, {
            file: redactUrl(target),
          }),
        );
        return;
      }
      if (head.length > 0) socket.unshift(head);
      resolve(socket);
    });
    req.on('error', reject);
    req.end();
  });
}
