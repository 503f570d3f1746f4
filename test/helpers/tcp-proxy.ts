// A loopback TCP proxy between a client and a server on this machine: it delays each direction
// by a fixed time (a WAN's round trip, for benchmarks) and can cut connections mid-stream (a
// dropped link, for failure tests). It listens on 127.0.0.1 only and forwards to one target.

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
  /** Cut every open connection now. */
  dropAll(): void;
  /** Cut each connection whose traffic reaches `n` bytes, counted from its start (one past it already is cut at its next chunk); undefined stops cutting. */
  setDropAfterBytes(n: number | undefined): void;
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
  const live = new Set<() => void>();
  const bytes = { up: 0, down: 0 };
  let accepted = 0;

  const server = net.createServer((client) => {
    accepted++;
    const upstream = net.connect(target.port, target.host);
    let passed = 0;
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
      if (dropAfter !== undefined && passed >= dropAfter) {
        cut();
        return false;
      }
      return true;
    };
    client.on('data', (d: Buffer) => {
      bytes.up += d.length;
      if (count(d.length)) up.push(d);
    });
    upstream.on('data', (d: Buffer) => {
      bytes.down += d.length;
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
    dropAll() {
      for (const cut of [...live]) cut();
    },
    setDropAfterBytes(n) {
      dropAfter = n;
    },
    close() {
      for (const cut of [...live]) cut();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
