// The certificates HTTPS downloads trust: the distribution's CA bundle (what curl and qemu-img's
// curl driver trust), Node's bundled Mozilla roots, NODE_EXTRA_CA_CERTS, and CAs the caller adds.
//
// Node trusts only its bundled roots plus NODE_EXTRA_CA_CERTS by default, and giving TLS a `ca`
// list replaces that default, so every source is read here and passed together.

import * as fs from 'fs';
import * as tls from 'tls';

/** CA bundles of the common distributions (Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine/macOS). */
export const DISTRO_CA_BUNDLES: readonly string[] = [
  '/etc/ssl/certs/ca-certificates.crt',
  '/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem',
  '/etc/pki/tls/certs/ca-bundle.crt',
  '/etc/ssl/ca-bundle.pem',
  '/etc/ssl/cert.pem',
];

export interface TrustOptions {
  /** Environment to read SSL_CERT_FILE and NODE_EXTRA_CA_CERTS from. Default `process.env`. */
  env?: NodeJS.ProcessEnv;
  /** More trusted CA certificates (PEM text). */
  ca?: string | readonly string[];
  /** Bundles to look for instead of DISTRO_CA_BUNDLES (tests). */
  bundles?: readonly string[];
}

const cache = new Map<string, string[]>();

function readPem(file: string): string[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return [];
  }
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/**
 * The trusted CA certificates (PEM, deduplicated): the first distribution bundle found (or
 * SSL_CERT_FILE when set, as OpenSSL does), Node's `tls.rootCertificates`, the file named by
 * NODE_EXTRA_CA_CERTS, and `ca`. Files are read once per process and combination.
 */
export function trustedCertificates(options: TrustOptions = {}): string[] {
  const env = options.env ?? process.env;
  const bundles = env.SSL_CERT_FILE ? [env.SSL_CERT_FILE] : (options.bundles ?? DISTRO_CA_BUNDLES);
  const extra = env.NODE_EXTRA_CA_CERTS ?? '';
  const key = JSON.stringify([bundles, extra]);
  let base = cache.get(key);
  if (base === undefined) {
    const system = bundles.map(readPem).find((certs) => certs.length > 0) ?? [];
    base = [...new Set([...system, ...tls.rootCertificates, ...(extra !== '' ? readPem(extra) : [])])];
    cache.set(key, base);
  }
  const added = options.ca === undefined ? [] : typeof options.ca === 'string' ? [options.ca] : [...options.ca];
  return added.length === 0 ? base : [...base, ...added];
}
