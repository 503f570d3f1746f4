// The `connection` input: how to reach a remote host over SSH, shaped like @pulumi/command's
// remote.ConnectionArgs so that users already know it, and its validation. Secrets (privateKey,
// privateKeyPassword, password) are never put in a message; the pool keys connections by a digest.

import { createHash } from 'crypto';
import * as fs from 'fs';
import { ParsedKey, utils } from 'ssh2';
import { Qcow2Error } from '../../model/errors';
import { fingerprint } from './hostkeys';

/** A jump host: the same settings as a connection, without a further proxy. */
export interface ProxyConnectionArgs {
  /** The host name or address to connect to. */
  host: string;
  /** The SSH port. Default 22. */
  port?: number;
  /** The user to log in as. Default "root". */
  user?: string;
  /** The contents (not the path) of a private key, OpenSSH or PEM. Tried first. */
  privateKey?: string;
  /** The passphrase of an encrypted `privateKey`. */
  privateKeyPassword?: string;
  /** A password, tried after the key and the agent (password and keyboard-interactive). */
  password?: string;
  /** The SSH agent's socket. Default $SSH_AUTH_SOCK when it is set. */
  agentSocketPath?: string;
  /**
   * The host's public key, an OpenSSH public key line ("ssh-ed25519 AAAA..."). When absent the key
   * must be in ~/.ssh/known_hosts. An unknown or changed key is always refused.
   */
  hostKey?: string;
  /** How many failed dials to allow before giving up; -1 retries without limit. Default 10. */
  dialErrorLimit?: number;
  /** Seconds allowed for each dial (TCP, handshake and authentication); 0 for no limit. Default 15. */
  perDialTimeout?: number;
}

/** How to reach a remote host (shaped like @pulumi/command's remote.ConnectionArgs). */
export interface ConnectionArgs extends ProxyConnectionArgs {
  /** A jump host to reach `host` through (an SSH direct-tcpip channel, as `ssh -J`). */
  proxy?: ProxyConnectionArgs;
}

/** A validated connection with its defaults applied. Its secrets are non-enumerable properties. */
export interface ResolvedConnection {
  readonly host: string;
  readonly port: number;
  readonly user: string;
  readonly privateKey?: string;
  readonly privateKeyPassword?: string;
  readonly password?: string;
  readonly agentSocketPath?: string;
  readonly hostKey?: string;
  readonly dialErrorLimit: number;
  /** Milliseconds; 0 for no limit. */
  readonly perDialTimeoutMs: number;
  readonly proxy?: ResolvedConnection;
  /** "user@host:port", for messages. */
  readonly label: string;
  /** The property path of these settings, for messages: "connection" or "connection.proxy". */
  readonly property: string;
  /** SHA256 fingerprint of the private key's public half, for messages (no secret). */
  readonly keyFingerprint?: string;
  /** Identifies the connection in the pool: host, port, user, proxy and a digest of the credentials. */
  readonly poolKey: string;
  /** More private keys, tried after the agent (the command line's ~/.ssh/id_*): never enumerable. */
  readonly identities?: ReadonlyArray<{ name: string; key: ParsedKey }>;
}

export const DEFAULT_PORT = 22;
export const DEFAULT_USER = 'root';
export const DEFAULT_DIAL_ERROR_LIMIT = 10;
export const DEFAULT_PER_DIAL_TIMEOUT = 15;

function invalid(property: string, message: string): Qcow2Error {
  return new Qcow2Error('INVALID_OPTION', `${property}: ${message}`, { property });
}

function optionalString(v: unknown, property: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalid(property, `must be a string (got ${typeof v})`);
  return v;
}

function integer(v: unknown, property: string, dflt: number, min: number, max: number): number {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw invalid(property, `must be a whole number from ${min} to ${max}`);
  }
  return v;
}

/** Parsed keys by a digest of key and passphrase: decrypting an OpenSSH key (bcrypt) costs ~0.5 s. */
const parsedKeys = new Map<string, ParsedKey>();

/** The parsed private key of a resolved connection (for ssh2, which then does not parse it again). */
export function parsedPrivateKey(rc: ResolvedConnection): ParsedKey | undefined {
  return rc.privateKey === undefined ? undefined : parsedKeys.get(digest([rc.privateKey, rc.privateKeyPassword]));
}

/** Parse the private key once, to report a bad key or passphrase as such (never the key itself). */
function checkPrivateKey(key: string, passphrase: string | undefined, property: string): string {
  const id = digest([key, passphrase]);
  const known = parsedKeys.get(id);
  if (known !== undefined) return fingerprint(known.getPublicSSH());
  const parsed = utils.parseKey(key, passphrase);
  const k = Array.isArray(parsed) ? parsed[0] : parsed;
  if (k instanceof Error || k === undefined) {
    const msg = k instanceof Error ? k.message : '';
    if (/no passphrase given/.test(msg)) {
      throw invalid(`${property}.privateKeyPassword`, 'the private key is encrypted: give its passphrase in privateKeyPassword');
    }
    if (/bad passphrase|integrity check failed|decrypt/i.test(msg)) {
      throw invalid(`${property}.privateKeyPassword`, 'does not decrypt the private key');
    }
    throw invalid(`${property}.privateKey`, 'is not a private key in a format this provider reads (OpenSSH, PEM PKCS#1 or PKCS#8, PuTTY). Give the key file\'s contents, not its path');
  }
  if (!k.isPrivateKey()) throw invalid(`${property}.privateKey`, 'is a public key; give the private key\'s contents');
  parsedKeys.set(id, k);
  return fingerprint(k.getPublicSSH());
}

function digest(parts: readonly (string | undefined)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p === undefined ? '\0u' : `\0s${p.length}:${p}`);
  return h.digest('hex');
}

function resolveOne(args: ProxyConnectionArgs, property: string, env: NodeJS.ProcessEnv, proxy?: ResolvedConnection): ResolvedConnection {
  if (typeof args !== 'object' || args === null) throw invalid(property, 'must be an object with at least a host');
  const host = optionalString(args.host, `${property}.host`);
  if (host === undefined || host.trim() === '') throw invalid(`${property}.host`, 'is required: the name or address of the host');
  if (/[\s@/]/.test(host)) throw invalid(`${property}.host`, `'${host}' is not a host name or address (no spaces, '@' or '/'; the user goes in user)`);
  const port = integer(args.port, `${property}.port`, DEFAULT_PORT, 1, 65535);
  const user = optionalString(args.user, `${property}.user`) ?? DEFAULT_USER;
  if (user === '') throw invalid(`${property}.user`, 'must not be empty');
  const privateKey = optionalString(args.privateKey, `${property}.privateKey`);
  const privateKeyPassword = optionalString(args.privateKeyPassword, `${property}.privateKeyPassword`);
  const password = optionalString(args.password, `${property}.password`);
  const agentSocketPath = optionalString(args.agentSocketPath, `${property}.agentSocketPath`) ?? (env.SSH_AUTH_SOCK || undefined);
  const hostKey = optionalString(args.hostKey, `${property}.hostKey`);
  const dialErrorLimit = integer(args.dialErrorLimit, `${property}.dialErrorLimit`, DEFAULT_DIAL_ERROR_LIMIT, -1, 1_000_000);
  if (dialErrorLimit === 0) throw invalid(`${property}.dialErrorLimit`, 'must be at least 1 (or -1 for no limit)');
  const perDialTimeout = integer(args.perDialTimeout, `${property}.perDialTimeout`, DEFAULT_PER_DIAL_TIMEOUT, 0, 86_400);
  const keyFingerprint = privateKey !== undefined ? checkPrivateKey(privateKey, privateKeyPassword, property) : undefined;
  if (privateKeyPassword !== undefined && privateKey === undefined) {
    throw invalid(`${property}.privateKeyPassword`, 'is set but privateKey is not');
  }
  const label = `${user}@${host}:${port}`;
  const poolKey = digest([host.toLowerCase(), String(port), user, privateKey, privateKeyPassword, password, agentSocketPath, hostKey, proxy?.poolKey]);
  const resolved = {
    host,
    port,
    user,
    ...(agentSocketPath !== undefined ? { agentSocketPath } : {}),
    ...(hostKey !== undefined ? { hostKey } : {}),
    ...(keyFingerprint !== undefined ? { keyFingerprint } : {}),
    ...(proxy !== undefined ? { proxy } : {}),
    dialErrorLimit,
    perDialTimeoutMs: perDialTimeout * 1000,
    label,
    property,
    poolKey,
  };
  // The secrets are not enumerable: a logged, inspected, serialized or spread copy lacks them.
  const secrets = { privateKey, privateKeyPassword, password };
  for (const [k, v] of Object.entries(secrets)) {
    if (v !== undefined) Object.defineProperty(resolved, k, { value: v, enumerable: false });
  }
  return resolved as ResolvedConnection;
}

/** Validate `args`, apply the defaults; throws INVALID_OPTION naming the property. */
export function resolveConnection(args: ConnectionArgs, env: NodeJS.ProcessEnv = process.env): ResolvedConnection {
  if (typeof args !== 'object' || args === null) throw invalid('connection', 'must be an object with at least a host');
  const proxy = args.proxy != null ? resolveOne(args.proxy, 'connection.proxy', env) : undefined;
  if (proxy !== undefined && (args.proxy as ConnectionArgs).proxy != null) {
    throw invalid('connection.proxy.proxy', 'one jump host is supported');
  }
  return resolveOne(args, 'connection', env, proxy);
}

/**
 * `rc` with more private keys to try after the agent, as OpenSSH tries ~/.ssh/id_*: `files`
 * that exist and hold an unencrypted private key (others are skipped: nobody is asked for a
 * passphrase). Their contents stay non-enumerable; the pool key covers them.
 */
export function withIdentityFiles(rc: ResolvedConnection, files: readonly string[]): ResolvedConnection {
  const identities: Array<{ name: string; key: ParsedKey }> = [];
  for (const name of files) {
    let text: string;
    try {
      text = fs.readFileSync(name, 'utf8');
    } catch {
      continue;
    }
    const parsed = utils.parseKey(text);
    const k = Array.isArray(parsed) ? parsed[0] : parsed;
    if (k === undefined || k instanceof Error || !k.isPrivateKey()) continue;
    identities.push({ name, key: k });
  }
  const out = { ...rc, poolKey: digest([rc.poolKey, ...identities.map((i) => i.key.getPublicSSH().toString('base64'))]) };
  for (const k of ['privateKey', 'privateKeyPassword', 'password'] as const) {
    if (rc[k] !== undefined) Object.defineProperty(out, k, { value: rc[k], enumerable: false });
  }
  Object.defineProperty(out, 'identities', { value: identities, enumerable: false });
  return out as ResolvedConnection;
}

/** True when `p` names a socket we can use (the agent is skipped, not an error, when it is gone). */
export function agentUsable(p: string | undefined): p is string {
  if (p === undefined) return false;
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}
