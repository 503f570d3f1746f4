// The command line's remote hosts: logging in to the host of an ssh:// image argument (cli/names.ts
// parses the URL) as OpenSSH does, and the engine that works there. The user defaults to the
// local one; the SSH agent is tried, then ~/.ssh/id_ed25519, id_ecdsa and id_rsa (unencrypted
// ones: nobody is asked for a passphrase); the host's key must be in ~/.ssh/known_hosts (or
// /etc/ssh/ssh_known_hosts). Loaded only when an argument is such a URL (cli/engine.ts).

import * as os from 'os';
import * as path from 'path';
import { getEngine } from '../engines';
import type { Engine } from '../engines/engine';
import { ResolvedConnection, resolveConnection, withIdentityFiles } from '../transport/ssh/connection';
import type { RemoteHost } from './names';

/** The keys tried after the agent, as OpenSSH's default identities. */
const IDENTITIES = ['id_ed25519', 'id_ecdsa', 'id_rsa'];

/** One connection per host named on the command line. */
const connections = new Map<string, ResolvedConnection>();

/** The connection to the host of an ssh:// name. */
export function connectionTo(remote: RemoteHost): ResolvedConnection {
  const key = JSON.stringify([remote.host, remote.port, remote.user]);
  let rc = connections.get(key);
  if (rc === undefined) {
    const resolved = resolveConnection({ host: remote.host, user: remote.user ?? os.userInfo().username, ...(remote.port !== undefined ? { port: remote.port } : {}) });
    const ssh = path.join(os.homedir(), '.ssh');
    rc = withIdentityFiles(resolved, IDENTITIES.map((n) => path.join(ssh, n)));
    connections.set(key, rc);
  }
  return rc;
}

/** Whether two names reach the same host with the same credentials (one connection serves both). */
export function sameHost(a: RemoteHost, b: RemoteHost): boolean {
  return connectionTo(a).poolKey === connectionTo(b).poolKey;
}

/** The native engine on the host of an ssh:// name (its operations run in a worker thread). */
export function engineOn(remote: RemoteHost): Engine {
  return getEngine('native', { native: { executor: 'inline' }, connection: connectionTo(remote) });
}

/** The native engine on this machine's files, reaching remote hosts for what it reads there (a convert's source). */
export function localEngine(): Engine {
  return getEngine('native', { native: { executor: 'inline' } });
}

/** Close the connections the command opened (the pool keeps idle ones, which would hold the process). */
export async function closeConnections(): Promise<void> {
  if (connections.size === 0) return;
  await (await import('../transport/ssh/pool')).sshPool().closeAll();
}
