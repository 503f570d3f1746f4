// Progress of long imports, as far as Pulumi can carry it from a dynamic provider.
//
// What the host allows (@pulumi/pulumi 3.248): the dynamic-provider host never connects to the
// engine (it ignores its engine-address argument), so pulumi.log inside a provider prints to
// the host's stdout, and create() receives no URN, so nothing can be tied to the resource. The
// engine does listen at that address (its Engine service, whose Log the Pulumi CLI shows), so
// this module sends status messages there itself: "Importing <source>: 41% (1.6 of 4.0 GiB)",
// ephemeral (a status line, not kept in the output), at most one every 2 s. Without a URN the
// CLI attributes them to no resource. Anything that goes wrong (no engine, a test host with a
// made-up address) silently turns the messages off: progress never fails an import.

import { createRequire } from 'node:module';

import type { ImportOptions } from '../engines/engine';
import { redactUrl } from '../transport/http/url';

/** Seconds between two messages. */
const INTERVAL_MS = 2000;

/** The engine's address when this process is Pulumi's dynamic-provider host, else undefined. */
function engineAddress(): string | undefined {
  const entry = process.argv[1] ?? '';
  const addr = process.argv[2];
  if (!/dynamic-provider[\\/]index\.js$/.test(entry) || addr === undefined || !/^[\w.-]+:\d+$|^\[[0-9a-f:]+\]:\d+$/i.test(addr)) return undefined;
  return addr;
}

type Send = (message: string) => void;

let sender: Send | null | undefined;

/** A sender of ephemeral INFO messages to the engine, or null when there is none. */
function engineLog(): Send | null {
  if (sender !== undefined) return sender;
  const addr = engineAddress();
  if (addr === undefined) return (sender = null);
  try {
    // @grpc/grpc-js is @pulumi/pulumi's dependency, not ours: resolve it from there, so it is the copy the
    // generated engine client below loads, wherever npm placed it.
    const fromPulumi = createRequire(require.resolve('@pulumi/pulumi/package.json'));
    const grpc = fromPulumi('@grpc/grpc-js') as { credentials: { createInsecure(): unknown } };
    /* eslint-disable @typescript-eslint/no-require-imports */
    const rpc = require('@pulumi/pulumi/proto/engine_grpc_pb') as { EngineClient: new (a: string, c: unknown) => { log(r: unknown, cb: (e: unknown) => void): void } };
    const pb = require('@pulumi/pulumi/proto/engine_pb') as { LogRequest: new () => Record<string, (v: unknown) => unknown>; LogSeverity: { INFO: number } };
    /* eslint-enable @typescript-eslint/no-require-imports */
    const client = new rpc.EngineClient(addr, grpc.credentials.createInsecure());
    let broken = false;
    sender = (message) => {
      if (broken) return;
      const req = new pb.LogRequest();
      req.setSeverity!(pb.LogSeverity.INFO);
      req.setMessage!(message);
      req.setUrn!('');
      req.setEphemeral!(true);
      client.log(req, (e) => {
        if (e) broken = true;
      });
    };
  } catch {
    sender = null;
  }
  return sender;
}

function size(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

/** The callbacks an import reports through: to the engine when there is one, else none. */
export function importProgress(source: string): Pick<ImportOptions, 'progress' | 'download'> {
  const send = engineLog();
  if (send === null) return {};
  const what = redactUrl(source);
  let last = 0;
  const report = (verb: string, done: number, total: number | undefined) => {
    const now = Date.now();
    const end = total !== undefined && done >= total;
    if (!end && now - last < INTERVAL_MS) return;
    last = now;
    const pct = total ? ` ${Math.floor((done / total) * 100)}% (${size(done)} of ${size(total)})` : ` ${size(done)}`;
    send(`${verb} ${what}:${pct}`);
  };
  return {
    download: (received, total) => report('Downloading', received, total),
    progress: (done, total) => report('Importing', done, total),
  };
}
