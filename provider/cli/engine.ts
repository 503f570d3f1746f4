// The engine the command line drives: the native engine, run on the calling thread for local
// files (a command has nothing else to do, and starting a worker thread would cost more than most
// commands). An image on a remote host (an ssh:// name) is worked on there through SFTP, by the
// same engine in a worker thread (the calling thread serves the connection).

import { getEngine } from '../engines';
import type { Engine, ImportSource } from '../engines/engine';
import type { ResolvedConnection } from '../transport/ssh/connection';
import { atEnd } from './io';
import type { ImageName, RemoteHost } from './names';

export function cliEngine(): Engine {
  return getEngine('native', { native: { executor: 'inline' } });
}

/** One connection per host named on the command line. */
const connections = new Map<string, ResolvedConnection>();

function connectionTo(remote: RemoteHost): ResolvedConnection {
  const key = JSON.stringify([remote.host, remote.port, remote.user]);
  let rc = connections.get(key);
  if (rc === undefined) {
    if (connections.size === 0) {
      // Idle pooled connections would keep the process alive: close them when the command ends.
      atEnd(async () => (await import('../transport/ssh/pool')).sshPool().closeAll());
    }
    rc = (require('./remote') as typeof import('./remote')).connectionTo(remote);
    connections.set(key, rc);
  }
  return rc;
}

/** The engine that works on the host an image name is on. */
export function engineFor(name: ImageName): Engine {
  if (name.remote === undefined) return cliEngine();
  return getEngine('native', { native: { executor: 'inline', connection: connectionTo(name.remote) } });
}

/** A convert's source as the engine of `dst` reads it: on its host, on this machine, or on another host. */
export function importSource(src: ImageName, dst: ImageName, format?: string): ImportSource {
  const out: ImportSource = { path: src.path, ...(format !== undefined ? { format } : {}) };
  if (src.remote === undefined) {
    if (dst.remote !== undefined) out.host = 'local';
  } else if (dst.remote === undefined || connectionTo(src.remote).poolKey !== connectionTo(dst.remote).poolKey) {
    out.host = connectionTo(src.remote);
  }
  return out;
}
