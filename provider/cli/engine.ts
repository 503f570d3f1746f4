// The engine the command line drives: the native engine, run on the calling thread for local
// files (a command has nothing else to do, and starting a worker thread would cost more than most
// commands). An image on a remote host (an ssh:// name) is worked on there through SFTP, by the
// same engine in a worker thread (the calling thread serves the connection): cli/remote.ts,
// loaded only then.

import { join } from 'path';
import { Qcow2Error } from '../model/errors';
import type { Engine, ImportSource } from '../engines/engine';
import { inlineEngine } from '../engines/inline';
import { atEnd } from './io';
import type { ImageName } from './names';
import type * as RemoteSide from './remote';

export function cliEngine(): Engine {
  return inlineEngine();
}

let remoteSide: typeof RemoteSide | undefined;

/**
 * cli/remote.ts, from the installed files rather than the executable's bundle (a computed name,
 * which the bundler leaves alone): the worker threads that serve a remote host load the engine
 * from those files, and the connections they use must be the ones this module closes.
 */
function remote(): typeof RemoteSide {
  if (remoteSide === undefined) {
    remoteSide = require(join(__dirname, 'remote')) as typeof RemoteSide;
    // Idle pooled connections would keep the process alive: close them when the command ends.
    const side = remoteSide;
    atEnd(() => side.closeConnections());
  }
  return remoteSide;
}

/**
 * The engine that works on the host an image name is on; `others` are the other images the
 * operation reads (a convert's source): an engine that reaches remote hosts when any is remote.
 */
export function engineFor(name: ImageName, ...others: ImageName[]): Engine {
  if (name.remote !== undefined) return remote().engineOn(name.remote);
  return others.some((o) => o.remote !== undefined) ? remote().localEngine() : cliEngine();
}

/**
 * A file argument of a command that works on this machine's files only (its names are used as
 * given): an ssh:// name is refused with the way forward rather than read as a local name.
 */
export function localFile(file: string, command: string): ImageName {
  if (/^ssh:\/\//i.test(file)) {
    throw new Qcow2Error('UNSUPPORTED', `${command} works on images on this machine only: '${file}' names a remote host. Run qcow2 ${command} there (ssh HOST qcow2 ${command} ...)`, { file });
  }
  return { path: file, display: file };
}

/** A convert's source as the engine of `dst` reads it: on its host, on this machine, or on another host. */
export function importSource(src: ImageName, dst: ImageName, format?: string): ImportSource {
  const out: ImportSource = { path: src.path, ...(format !== undefined ? { format } : {}) };
  if (src.remote === undefined) {
    if (dst.remote !== undefined) out.host = 'local';
  } else if (dst.remote === undefined || !remote().sameHost(src.remote, dst.remote)) {
    out.host = remote().connectionTo(src.remote);
  }
  return out;
}
