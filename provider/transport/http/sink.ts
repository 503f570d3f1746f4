// Sinks for a transfer: a file (resumable: its bytes are re-hashed when a later process picks it
// up) and a stream handed to a consumer (which cannot start over). Both hash what they take.

import * as fs from 'fs';
import { PassThrough } from 'stream';
import { Qcow2Error } from '../../model/errors';
import { ChecksumAlgorithm, StreamingDigest } from './checksum';
import type { Sink } from './transfer';

const REHASH_CHUNK = 1 << 20;

/**
 * Bytes per write of a FileSink: chunks gathered into this, written while the next fills (1 MiB
 * measured no faster; two buffers of it count in a URL import's peak memory, the download's).
 */
const WRITE_CHUNK = 256 << 10;

/**
 * Received bytes appended to a file, hashed as they arrive. The body comes in chunks of up to
 * 64 KiB; they are gathered into a 256 KiB buffer, written (on libuv's pool) while the next
 * buffer fills and is hashed here: one write, one hand-over to another thread, per 256 KiB, not
 * per chunk (a 478 MiB download from 127.0.0.1: about 0.25 s less CPU than with a write awaited
 * per chunk, 1.58 against 1.82 s, medians of 4 on a loaded machine).
 * `offset` counts every byte taken; sync() and close() write what is gathered first.
 */
export class FileSink implements Sink {
  private filling: Buffer = Buffer.allocUnsafe(WRITE_CHUNK);
  private spare: Buffer | undefined = Buffer.allocUnsafe(WRITE_CHUNK);
  private filled = 0;
  /** The file's length once the write in flight is done. */
  private written: number;
  /** The write in flight (it rejects with its failure), if any. */
  private writing: Promise<void> | undefined;

  private constructor(
    private readonly fh: fs.promises.FileHandle,
    readonly digest: StreamingDigest,
    private position: number,
  ) {
    this.written = position;
  }

  /**
   * Open `file` for receiving: a new file (`flag` 'wx', fails if it exists) or, with 'r+', an
   * existing partial download whose bytes are hashed first so that the digest covers the whole
   * file once the rest arrives.
   */
  static async open(file: string, algorithm: ChecksumAlgorithm, flag: 'wx' | 'r+'): Promise<FileSink> {
    const fh = await fs.promises.open(file, flag, 0o600);
    const digest = new StreamingDigest(algorithm);
    try {
      let position = 0;
      if (flag === 'r+') {
        const buf = Buffer.allocUnsafe(REHASH_CHUNK);
        for (;;) {
          const { bytesRead } = await fh.read(buf, 0, buf.length, position);
          if (bytesRead === 0) break;
          digest.update(buf.subarray(0, bytesRead));
          position += bytesRead;
        }
      }
      return new FileSink(fh, digest, position);
    } catch (e) {
      await fh.close();
      throw e;
    }
  }

  get offset(): number {
    return this.position;
  }

  async write(chunk: Buffer): Promise<void> {
    this.digest.update(chunk);
    this.position += chunk.length;
    for (let from = 0; from < chunk.length;) {
      const n = Math.min(chunk.length - from, WRITE_CHUNK - this.filled);
      chunk.copy(this.filling, this.filled, from, from + n);
      this.filled += n;
      from += n;
      if (this.filled === WRITE_CHUNK) await this.startWrite();
    }
  }

  /** Wait for the write in flight, then start writing what is gathered (its buffer swapped for the spare). */
  private async startWrite(): Promise<void> {
    await this.settle();
    if (this.filled === 0) return;
    const buf = this.filling, length = this.filled, at = this.written;
    this.filling = this.spare ?? Buffer.allocUnsafe(WRITE_CHUNK);
    this.spare = undefined;
    this.filled = 0;
    this.written += length;
    const w = (async () => {
      let done = 0;
      while (done < length) {
        const { bytesWritten } = await this.fh.write(buf, done, length - done, at + done);
        done += bytesWritten;
      }
      this.spare = buf;
    })();
    w.catch(() => undefined); // observed by the next settle()
    this.writing = w;
  }

  /** The write in flight finished (its failure thrown here). */
  private async settle(): Promise<void> {
    const w = this.writing;
    this.writing = undefined;
    await w;
  }

  /** Every byte taken written to the file (not yet flushed to disk). */
  private async drain(): Promise<void> {
    await this.startWrite();
    await this.settle();
  }

  async restart(): Promise<void> {
    await this.settle().catch(() => undefined);
    this.filled = 0;
    await this.fh.truncate(0);
    this.position = 0;
    this.written = 0;
    this.digest.reset();
  }

  /** Write what is gathered and flush to disk (before the file is published). */
  async sync(): Promise<void> {
    await this.drain();
    await this.fh.sync();
  }

  /** Write what is gathered (a partial download is kept for resuming), then close; failures are ignored. */
  async close(): Promise<void> {
    await this.drain().catch(() => undefined);
    await this.fh.close().catch(() => undefined);
  }
}

/** Received bytes handed on through a stream (backpressure respected), hashed as they pass. */
export class StreamSink implements Sink {
  readonly stream = new PassThrough({ highWaterMark: 1 << 20 });
  readonly digest: StreamingDigest;
  private position = 0;

  constructor(
    algorithm: ChecksumAlgorithm,
    private readonly what: string,
  ) {
    this.digest = new StreamingDigest(algorithm);
  }

  get offset(): number {
    return this.position;
  }

  async write(chunk: Buffer): Promise<void> {
    if (this.stream.destroyed) throw new Qcow2Error('CONNECTION', `The download of ${this.what} was abandoned by its reader`, { file: this.what });
    this.position += chunk.length;
    this.digest.update(chunk);
    if (!this.stream.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.stream.off('drain', done);
          this.stream.off('close', done);
          resolve();
        };
        this.stream.on('drain', done);
        this.stream.on('close', done);
      });
    }
  }

  async restart(): Promise<void> {
    if (this.position === 0) return;
    throw new Qcow2Error(
      'HTTP',
      `The server sent ${this.what} again from its start after ${this.position} bytes had been passed on (it ignored a Range request, or the file changed); a stream cannot start over: try again, or use the download cache`,
      { file: this.what },
    );
  }
}
