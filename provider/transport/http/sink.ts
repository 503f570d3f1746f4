// Sinks for a transfer: a file (resumable: its bytes are re-hashed when a later process picks it
// up) and a stream handed to a consumer (which cannot start over). Both hash what they take.

import * as fs from 'fs';
import { PassThrough } from 'stream';
import { Qcow2Error } from '../../model/errors';
import { ChecksumAlgorithm, StreamingDigest } from './checksum';
import type { Sink } from './transfer';

const REHASH_CHUNK = 1 << 20;

/** Received bytes appended to a file, hashed as they are written. */
export class FileSink implements Sink {
  private constructor(
    private readonly fh: fs.promises.FileHandle,
    readonly digest: StreamingDigest,
    private position: number,
  ) {}

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
    let done = 0;
    while (done < chunk.length) {
      const { bytesWritten } = await this.fh.write(chunk, done, chunk.length - done, this.position + done);
      done += bytesWritten;
    }
    this.position += chunk.length;
    this.digest.update(chunk);
  }

  async restart(): Promise<void> {
    await this.fh.truncate(0);
    this.position = 0;
    this.digest.reset();
  }

  /** Flush to disk (before the file is published). */
  async sync(): Promise<void> {
    await this.fh.sync();
  }

  async close(): Promise<void> {
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
