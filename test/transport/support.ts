// What the transport suites share: a started sshd with a pool and one leased connection, torn
// down after the suite, the typed error a promise rejects with, and a stream read to its end.

import type { Readable } from 'stream';
import { inspect } from 'util';
import { afterAll, beforeAll, expect } from 'vitest';
import { Qcow2Error } from '../../provider/model/errors';
import { SshPool, type SshConnection } from '../../provider/transport/ssh';
import { startSshd, type Sshd, type SshdOptions } from '../helpers/sshd';

/** The Qcow2Error `p` rejects with (fails the test when it resolves or throws something else). */
export async function failure(p: Promise<unknown>): Promise<Qcow2Error> {
  try {
    await p;
  } catch (e) {
    expect(Qcow2Error.isInstance(e), `not a Qcow2Error: ${inspect(e)}`).toBe(true);
    return e as Qcow2Error;
  }
  throw new Error('expected a failure');
}

/** Every byte of `stream`, once it ended (rejects with its error). */
export async function drain(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export interface SshdSuite {
  sshd: Sshd;
  pool: SshPool;
  /** A lease on the pooled connection, logged in with the fixture's key. */
  conn: SshConnection;
}

/** Start sshd before the suite (pool trusting its key through its known_hosts), stop it after. */
export function useSshd(opts: SshdOptions = {}): SshdSuite {
  const ctx = {} as SshdSuite;
  beforeAll(async () => {
    ctx.sshd = await startSshd(opts);
    ctx.pool = new SshPool({ knownHostsFiles: [ctx.sshd.knownHostsPath], env: {} });
    ctx.conn = await ctx.pool.connect(ctx.sshd.connection());
  });
  afterAll(async () => {
    ctx.conn?.release();
    await ctx.pool?.closeAll();
    await ctx.sshd?.stop();
  });
  return ctx;
}
