// FileSink (transport/http/sink.ts): chunks of any size gathered into 256 KiB writes, written
// while the next fills; the file ends as the bytes taken, in order, whatever the chunk sizes; a
// restart forgets the bytes gathered and written; close writes what is gathered, so a partial
// download kept for resuming holds every byte its offset counts; a reopened partial file is
// hashed again and continued.

import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { FileSink } from '../../../provider/transport/http/sink';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-sink-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** `total` bytes in chunks of varying size (1 byte up to 200 KiB), as a socket might deliver them. */
function chunks(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let p = 0, i = 0; p < data.length; i++) {
    const n = Math.min(data.length - p, [1, 65536, 200_000, 4095, 1 << 20][i % 5]!);
    out.push(data.subarray(p, p + n));
    p += n;
  }
  return out;
}

const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

describe('FileSink', () => {
  it('writes_the_bytes_taken_in_order_across_its_writes', async () => {
    const data = crypto.randomBytes(3 * (1 << 20) + 12345);
    const file = path.join(dir, 'whole');
    const sink = await FileSink.open(file, 'sha256', 'wx');
    for (const c of chunks(data)) await sink.write(c);
    expect(sink.offset).toBe(data.length);
    await sink.sync();
    await sink.close();
    expect(fs.readFileSync(file).equals(data)).toBe(true);
    expect(sink.digest.current().hex).toBe(sha256(data));
  });

  it('a_restart_forgets_what_was_gathered_and_written', async () => {
    const first = crypto.randomBytes((1 << 20) + 777), second = crypto.randomBytes((2 << 20) + 5);
    const file = path.join(dir, 'restart');
    const sink = await FileSink.open(file, 'sha256', 'wx');
    for (const c of chunks(first)) await sink.write(c);
    await sink.restart();
    expect(sink.offset).toBe(0);
    for (const c of chunks(second)) await sink.write(c);
    await sink.sync();
    await sink.close();
    expect(fs.readFileSync(file).equals(second)).toBe(true);
    expect(sink.digest.current().hex).toBe(sha256(second));
  });

  it('close_keeps_every_byte_counted_and_a_reopened_file_continues', async () => {
    const data = crypto.randomBytes((2 << 20) + 4321);
    const cut = (1 << 20) + 100_000;
    const file = path.join(dir, 'partial');
    const sink = await FileSink.open(file, 'sha256', 'wx');
    for (const c of chunks(data.subarray(0, cut))) await sink.write(c);
    const counted = sink.offset;
    await sink.close(); // a dropped download, kept for resuming
    expect(fs.statSync(file).size).toBe(counted);
    const again = await FileSink.open(file, 'sha256', 'r+');
    expect(again.offset).toBe(counted);
    for (const c of chunks(data.subarray(counted))) await again.write(c);
    await again.sync();
    await again.close();
    expect(fs.readFileSync(file).equals(data)).toBe(true);
    expect(again.digest.current().hex).toBe(sha256(data));
  });
});
