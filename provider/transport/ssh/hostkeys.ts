// Host key verification, as OpenSSH's StrictHostKeyChecking=yes does it: the key a host offers
// must be `connection.hostKey` when that is given, else an entry of known_hosts for the host.
// Unknown, changed and revoked keys are refused before anything is sent to the host.
//
// known_hosts lines (sshd(8) "SSH_KNOWN_HOSTS FILE FORMAT"): [@marker] patterns keytype base64
// [comment]. Patterns are comma-separated, with * and ? wildcards and !negation, or one hashed
// name |1|base64(salt)|base64(HMAC-SHA1(salt, name)). The name looked up is the host as given,
// lower-cased, or "[host]:port" when the port is not 22. @revoked keys are refused for the hosts
// they match; @cert-authority lines are skipped (host certificates are not supported).

import { createHash, createHmac } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { utils } from 'ssh2';
import { Qcow2Error } from '../../model/errors';

/** A public key: its type name and its wire-format blob. */
export interface PublicKey {
  readonly type: string;
  readonly blob: Buffer;
}

/** One known_hosts entry that applies to a host. */
export interface KnownHostEntry {
  readonly marker?: 'revoked' | 'cert-authority';
  readonly key: PublicKey;
  /** Where it was read, for messages: "file:line". */
  readonly source: string;
}

/** OpenSSH's SHA256 fingerprint: "SHA256:" + unpadded base64 of the blob's digest. */
export function fingerprint(blob: Uint8Array): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** An OpenSSH public key line for a key: "type base64". */
export function keyLine(key: PublicKey): string {
  return `${key.type} ${key.blob.toString('base64')}`;
}

/** The key type written inside a blob (its first SSH string), or undefined when malformed. */
function blobType(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const n = blob.readUInt32BE(0);
  if (n === 0 || n > 64 || 4 + n > blob.length) return undefined;
  return blob.toString('latin1', 4, 4 + n);
}

/**
 * Parse `connection.hostKey`: an OpenSSH public key line ("ssh-ed25519 AAAA... comment"), as in
 * an .pub file or the output of ssh-keyscan without its host name.
 */
export function parseHostKey(text: string, property = 'connection.hostKey'): PublicKey {
  const parsed = utils.parseKey(text.trim());
  const key = Array.isArray(parsed) ? parsed[0] : parsed;
  if (key === undefined || key instanceof Error || key.isPrivateKey()) {
    throw new Qcow2Error(
      'INVALID_OPTION',
      `${property} is not an OpenSSH public key line: expected "TYPE BASE64", as printed by ssh-keyscan (without the host name) or found in /etc/ssh/ssh_host_*_key.pub on the host`,
      { property },
    );
  }
  return { type: key.type, blob: key.getPublicSSH() };
}

/** The name OpenSSH looks a host up by: "host", or "[host]:port" off port 22. */
export function knownHostsName(host: string, port: number): string {
  const h = host.toLowerCase();
  return port === 22 ? h : `[${h}]:${port}`;
}

/** The files read when no hostKey is given: the user's, then the system's. */
export function defaultKnownHostsFiles(): string[] {
  return [path.join(os.homedir(), '.ssh', 'known_hosts'), '/etc/ssh/ssh_known_hosts'];
}

function wildcard(pattern: string, name: string): boolean {
  const re = new RegExp(`^${pattern.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`, 's');
  return re.test(name);
}

/** OpenSSH match_hostname: true when a positive pattern matches and no negated one does. */
export function hostPatternsMatch(patterns: string, name: string): boolean {
  if (patterns.startsWith('|1|')) {
    const [, , salt, hash] = patterns.split('|');
    if (salt === undefined || hash === undefined) return false;
    const mac = createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64');
    return mac === hash;
  }
  let matched = false;
  for (const raw of patterns.split(',')) {
    const negated = raw.startsWith('!');
    const p = (negated ? raw.slice(1) : raw).toLowerCase();
    if (p === '' || !wildcard(p, name)) continue;
    if (negated) return false;
    matched = true;
  }
  return matched;
}

/** The entries of `files` (missing files skipped) whose patterns match `name`. */
export function knownHostEntries(files: readonly string[], name: string): KnownHostEntry[] {
  const out: KnownHostEntry[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      continue;
    }
    text.split('\n').forEach((line, i) => {
      const fields = line.trim().split(/\s+/);
      if (fields[0] === undefined || fields[0] === '' || fields[0].startsWith('#')) return;
      let marker: KnownHostEntry['marker'];
      if (fields[0].startsWith('@')) {
        const m = fields.shift()!;
        if (m === '@revoked') marker = 'revoked';
        else if (m === '@cert-authority') marker = 'cert-authority';
        else return; // unknown marker: OpenSSH ignores the line
      }
      const [patterns, type, b64] = fields;
      if (patterns === undefined || type === undefined || b64 === undefined) return;
      if (!hostPatternsMatch(patterns, name)) return;
      const blob = Buffer.from(b64, 'base64');
      if (blobType(blob) !== type) return; // malformed line: never a match
      out.push({ ...(marker !== undefined ? { marker } : {}), key: { type, blob }, source: `${file}:${i + 1}` });
    });
  }
  return out;
}

/** The host-key signature algorithms of each key type, as ssh2 names them. */
function algorithmsOf(type: string): string[] {
  return type === 'ssh-rsa' ? ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'] : [type];
}

/** ssh2's default host-key algorithms, in its order of preference. */
const DEFAULT_ALGORITHMS = [
  'ssh-ed25519',
  'ecdsa-sha2-nistp256',
  'ecdsa-sha2-nistp384',
  'ecdsa-sha2-nistp521',
  'rsa-sha2-512',
  'rsa-sha2-256',
  'ssh-rsa',
];

/** How one host's key is checked. */
export interface HostKeyPolicy {
  /** The host-key algorithms to offer, the types we can verify first (as OpenSSH orders them). */
  readonly algorithms: string[];
  /** Check the offered key (its wire blob); on refusal returns the error to report. */
  verify(blob: Buffer): Qcow2Error | undefined;
}

export interface HostKeyTarget {
  readonly host: string;
  readonly port: number;
  /** Set when the key comes from the `connection.proxy` settings (for messages). */
  readonly property: string;
  readonly hostKey?: string;
}

function keyscanHint(t: HostKeyTarget, type: string): string {
  const short = type.replace(/^ssh-/, '').replace(/^ecdsa-sha2-nistp\d+$/, 'ecdsa');
  return (
    `After checking the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_${short}_key.pub), accept the key by setting ` +
    `${t.property}.hostKey to that key line, or by adding it to ~/.ssh/known_hosts: ` +
    `ssh-keyscan -p ${t.port} -t ${type} ${t.host} >> ~/.ssh/known_hosts`
  );
}

/** Build the check for `target`: its hostKey when given, else the known_hosts `files`. */
export function hostKeyPolicy(target: HostKeyTarget, files: readonly string[] = defaultKnownHostsFiles()): HostKeyPolicy {
  const where = `${target.host}:${target.port}`;
  if (target.hostKey !== undefined) {
    const expected = parseHostKey(target.hostKey, `${target.property}.hostKey`);
    return {
      algorithms: algorithmsOf(expected.type),
      verify(blob) {
        if (blob.equals(expected.blob)) return undefined;
        const offered = blobType(blob) ?? 'unknown';
        return new Qcow2Error(
          'HOST_KEY',
          `Host key verification failed for ${where}: it offered ${offered} key ${fingerprint(blob)}, but ${target.property}.hostKey is ` +
            `${expected.type} key ${fingerprint(expected.blob)}. Nothing was sent to the host. If the host was reinstalled and the new ` +
            `key is genuine, put it in ${target.property}.hostKey: ${offered} ${blob.toString('base64')}`,
          { property: `${target.property}.hostKey` },
        );
      },
    };
  }
  const name = knownHostsName(target.host, target.port);
  const entries = knownHostEntries(files, name);
  const known = entries.filter((e) => e.marker === undefined);
  const revoked = entries.filter((e) => e.marker === 'revoked');
  const knownTypes = [...new Set(known.map((e) => e.key.type))];
  const preferred = knownTypes.flatMap(algorithmsOf).filter((a) => DEFAULT_ALGORITHMS.includes(a));
  return {
    algorithms: [...preferred, ...DEFAULT_ALGORITHMS.filter((a) => !preferred.includes(a))],
    verify(blob) {
      const offered = blobType(blob) ?? 'unknown';
      const fp = fingerprint(blob);
      const bad = revoked.find((e) => e.key.blob.equals(blob));
      if (bad !== undefined) {
        return new Qcow2Error(
          'HOST_KEY',
          `Host key verification failed for ${where}: its ${offered} key ${fp} is marked @revoked in ${bad.source}. ` +
            'Nothing was sent to the host. Ask its administrator for a new host key.',
          { property: `${target.property}.hostKey` },
        );
      }
      if (known.some((e) => e.key.blob.equals(blob))) return undefined;
      if (known.length === 0) {
        return new Qcow2Error(
          'HOST_KEY',
          `Host key verification failed for ${where}: the host is not in ${files.join(' or ')} and ${target.property}.hostKey is not set. ` +
            `It offered ${offered} key ${fp}; nothing was sent to it. ${keyscanHint(target, offered)}`,
          { property: `${target.property}.hostKey` },
        );
      }
      const recorded = known.map((e) => `${e.key.type} ${fingerprint(e.key.blob)} (${e.source})`).join(', ');
      return new Qcow2Error(
        'HOST_KEY',
        `Host key verification failed for ${where}: the HOST KEY HAS CHANGED. It offered ${offered} key ${fp}, but known_hosts records ` +
          `${recorded}. Someone may be intercepting the connection, or the host was reinstalled. Nothing was sent to the host. If the ` +
          `change is expected, remove the old entry (ssh-keygen -R '${name}') and accept the new key. ${keyscanHint(target, offered)}`,
        { property: `${target.property}.hostKey` },
      );
    },
  };
}
