// The loopback TCP proxy of the SSH benchmarks and failure tests: bytes pass unchanged and in
// order, each direction waits at least the delay, and a cut resets both sides.

import { randomBytes } from 'crypto';
import * as net from 'net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTcpProxy } from '../helpers/tcp-proxy';

describe('the delaying, cutting TCP proxy', () => {
  let echo: net.Server;
  let port: number;

  beforeAll(async () => {
    echo = net.createServer((s) => {
      s.on('error', () => undefined); // the cut resets it
      s.pipe(s);
    });
    await new Promise<void>((r) => echo.listen(0, '127.0.0.1', () => r()));
    port = (echo.address() as net.AddressInfo).port;
  });

  afterAll(() => new Promise<void>((r) => echo.close(() => r())));

  /** Send `data` through a new connection and collect `data.length` bytes back. */
  function roundTrip(proxyPort: number, data: Buffer, chunk = 1000): Promise<{ back: Buffer; ms: number; error?: Error }> {
    return new Promise((resolve) => {
      const t0 = process.hrtime.bigint();
      const got: Buffer[] = [];
      let n = 0;
      const s = net.connect(proxyPort, '127.0.0.1', () => {
        for (let i = 0; i < data.length; i += chunk) s.write(data.subarray(i, i + chunk));
      });
      const done = (error?: Error) => resolve({ back: Buffer.concat(got), ms: Number(process.hrtime.bigint() - t0) / 1e6, ...(error ? { error } : {}) });
      s.on('data', (d: Buffer) => {
        got.push(d);
        n += d.length;
        if (n >= data.length) {
          s.end();
          done();
        }
      });
      s.on('error', (e) => done(e));
    });
  }

  it('passes bytes unchanged and in order, each direction delayed', async () => {
    const proxy = await startTcpProxy({ host: '127.0.0.1', port }, { delayMs: 40 });
    try {
      const data = randomBytes(300_000);
      const r = await roundTrip(proxy.port, data);
      expect(r.error).toBeUndefined();
      expect(r.back.equals(data)).toBe(true);
      // Up and down each wait 40 ms: no reply can come sooner than 80 ms.
      expect(r.ms).toBeGreaterThanOrEqual(80);
      expect(proxy.accepted).toBe(1);
      expect(proxy.bytes).toEqual({ up: data.length, down: data.length });
    } finally {
      await proxy.close();
    }
  });

  it('cuts a connection once its traffic reaches the limit, and lets later ones through', async () => {
    const proxy = await startTcpProxy({ host: '127.0.0.1', port }, { dropAfterBytes: 50_000 });
    try {
      const cut = await roundTrip(proxy.port, randomBytes(200_000));
      expect(cut.error?.message).toMatch(/ECONNRESET/);
      expect(cut.back.length).toBeLessThan(50_000);
      proxy.setDropAfterBytes(undefined);
      const data = randomBytes(100_000);
      const ok = await roundTrip(proxy.port, data);
      expect(ok.back.equals(data)).toBe(true);
      expect(proxy.accepted).toBe(2);
    } finally {
      await proxy.close();
    }
  });
});
