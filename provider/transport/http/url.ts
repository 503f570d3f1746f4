// Source URLs: which ones we fetch, and how they appear in messages (never with credentials).

import { Qcow2Error } from '../../model/errors';

/** Query parameters whose values are secrets in the URL schemes cloud storage and mirrors use. */
const SECRET_QUERY = /(sig|signature|token|key|secret|passw|pwd|auth|credential|session|jwt|code)/i;

/** True for text that names an http:// or https:// URL (the `source` values fetched over the network). */
export function isHttpUrl(text: string): boolean {
  return /^https?:\/\//i.test(text);
}

/**
 * Parse a source URL. Only http and https are fetched; anything else is refused naming
 * `property`. Credentials in the URL (`https://user:pass@host/...`) are kept (they become a
 * Basic Authorization header for that origin only) but never appear in a message.
 */
export function parseSourceUrl(text: string, property = 'source'): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Qcow2Error('INVALID_OPTION', `${property}: '${redactText(text)}' is not a valid URL`, { property });
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Qcow2Error('INVALID_OPTION', `${property}: only http:// and https:// URLs can be downloaded, not ${url.protocol}//`, {
      property,
    });
  }
  return url;
}

/**
 * The URL as it may appear in a message or log: user name and password replaced by `***`, and
 * the values of query parameters that look like secrets (signatures, tokens, keys) by `***`.
 */
export function redactUrl(url: URL | string): string {
  let u: URL;
  try {
    u = new URL(typeof url === 'string' ? url : url.href);
  } catch {
    return redactText(String(url));
  }
  if (u.username !== '' || u.password !== '') {
    u.username = '***';
    u.password = '';
  }
  let out = `${u.protocol}//${u.username !== '' ? '***@' : ''}${u.host}${u.pathname}`;
  if (u.search !== '') {
    const parts: string[] = [];
    for (const [k, v] of u.searchParams) parts.push(SECRET_QUERY.test(k) && v !== '' ? `${encodeURIComponent(k)}=***` : `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
    out += `?${parts.join('&')}`;
  }
  return out;
}

/** Redact what looks like userinfo in text that is not a parseable URL. */
function redactText(text: string): string {
  const short = text.length > 200 ? `${text.slice(0, 200)}...` : text;
  return short.replace(/\/\/[^/@\s]*@/g, '//***@');
}
