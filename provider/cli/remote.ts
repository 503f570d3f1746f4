// Logging in to the host of an ssh:// image argument (cli/names.ts parses the URL), as OpenSSH
// does: the user defaults to the local one; the SSH agent is tried, then ~/.ssh/id_ed25519,
// id_ecdsa and id_rsa (unencrypted ones: nobody is asked for a passphrase); the host's key must
// be in ~/.ssh/known_hosts (or /etc/ssh/ssh_known_hosts). Loaded only when an argument is such
// a URL.

import * as os from 'os';
import * as path from 'path';
import { ResolvedConnection, resolveConnection, withIdentityFiles } from '../transport/ssh/connection';
import type { RemoteHost } from './names';

/** The keys tried after the agent, as OpenSSH's default identities. */
const IDENTITIES = ['id_ed25519', 'id_ecdsa', 'id_rsa'];

/** The connection to the host of an ssh:// name. */
export function connectionTo(remote: RemoteHost): ResolvedConnection {
  const rc = resolveConnection({ host: remote.host, user: remote.user ?? os.userInfo().username, ...(remote.port !== undefined ? { port: remote.port } : {}) });
  const ssh = path.join(os.homedir(), '.ssh');
  return withIdentityFiles(rc, IDENTITIES.map((n) => path.join(ssh, n)));
}
