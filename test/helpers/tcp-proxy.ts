// A loopback TCP proxy between a client and a server on this machine: it delays each direction
// by a fixed time (a WAN's round trip, for benchmarks), can cut connections mid-stream (a
// dropped link, for failure tests), call back when a connection's traffic reaches a byte count
// (to kill a client at a chosen point) and pause (to look at the server's side mid-operation). It listens on 127.0.0.1 only and forwards to one target.

import * as net from 'net';

export interface TcpProxyOptions {
  /** Delay added to each direction, in ms (a round trip costs twice this). Default 0. */
  delayMs?: number;
  /** Cut each connection (RST both sides) once this many bytes have passed in either direction. */
  dropAfterBytes?: number;
}

export interface TcpProxy {
  readonly port: number;
  /** Connections accepted so far. */
  readonly accepted: number;
  /** Bytes forwarded client -> server and server -> client. */
  readonly bytes: { up: number; down: number };
  /** Round trips: client chunks that arrived after the server had sent something (over all connections). */
  readonly turns: number;
  /** Cut every open connection now. */
  dropAll(): void;
  /** Cut each connection whose traffic reaches `n` bytes, counted from its start (one past it already is cut at its next chunk); undefined stops cutting. */
  setDropAfterBytes(n: number | undefined): void;
  /** Call `fn` (once per connection) when a connection's traffic reaches `n` bytes, before that chunk is forwarded; undefined stops. */
  onBytes(n: number | undefined, fn?: () => void): void;
  /** Stop forwarding (both directions, every connection, new ones too) until resume(). */
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

/** A FIFO that releases each chunk `delayMs` after it arrived, in order. */
class DelayLine {
  private readonly queue: { at: number; chunk: Buffer }[] = [];
  private timer?: NodeJS.Timeout;
  constructor(private readonly delayMs: number, private readonly out: (b: Buffer) => void) {}

  push(chunk: Buffer): void {
    if (this.delayMs <= 0) return this.out(chunk);
    this.queue.push({ at: Date.now() + this.delayMs, chunk });
    this.schedule();
  }

  private schedule(): void {
    if (this.timer !== undefined || this.queue.length === 0) return;
    const wait = Math.max(0, this.queue[0]!.at - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const now = Date.now();
      while (this.queue.length > 0 && this.queue[0]!.at <= now) this.out(this.queue.shift()!.chunk);
      this.schedule();
    }, wait);
  }

  clear(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.length = 0;
  }
}

export async function startTcpProxy(target: { host: string; port: number }, opts: TcpProxyOptions = {}): Promise<TcpProxy> {
  const delay = opts.delayMs ?? 0;
  let dropAfter = opts.dropAfterBytes;
  let hook: { n: number; fn: () => void } | undefined;
  let paused = false;
  const sockets = new Set<net.Socket>();
  const live = new Set<() => void>();
  const bytes = { up: 0, down: 0 };
  let accepted = 0;
  let turns = 0;

  const server = net.createServer((client) => {
    accepted++;
    const upstream = net.connect(target.port, target.host);
    let passed = 0;
    let hooked = false;
    let answered = true; // the client speaks first: its first chunk is a round trip
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      if (paused) s.pause();
    }
    const up = new DelayLine(delay, (b) => upstream.write(b));
    const down = new DelayLine(delay, (b) => client.write(b));
    const cut = () => {
      live.delete(cut);
      up.clear();
      down.clear();
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    };
    live.add(cut);
    const count = (n: number) => {
      passed += n;
      if (hook !== undefined && !hooked && passed >= hook.n) {
        hooked = true;
        hook.fn();
      }
      if (dropAfter !== undefined && passed >= dropAfter) {
        cut();
        return false;
      }
      return true;
    };
    client.on('data', (d: Buffer) => {
      bytes.up += d.length;
      if (answered) turns++;
      answered = false;
      if (count(d.length)) up.push(d);
    });
    upstream.on('data', (d: Buffer) => {
      bytes.down += d.length;
      answered = true;
      if (count(d.length)) down.push(d);
    });
    const end = () => {
      live.delete(cut);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    // Half-closes pass through after the data queued before them.
    client.on('end', () => setTimeout(() => upstream.end(), delay));
    upstream.on('end', () => setTimeout(() => client.end(), delay));
    client.on('close', () => live.delete(cut));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    get accepted() {
      return accepted;
    },
    bytes,
    get turns() {
      return turns;
    },
    dropAll() {
      for (const cut of [...live]) cut();
    },
    setDropAfterBytes(n) {
      dropAfter = n;
    },
    onBytes(n, fn) {
      hook = n === undefined || fn === undefined ? undefined : { n, fn };
    },
    pause() {
      paused = true;
      for (const s of sockets) s.pause();
    },
    resume() {
      paused = false;
      for (const s of sockets) s.resume();
    },
    close() {
      for (const cut of [...live]) cut();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
