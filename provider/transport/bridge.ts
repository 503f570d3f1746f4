// A synchronous call from a worker thread into asynchronous code on the main thread. The format
// engine is synchronous and runs in a worker; remote I/O (SSH, SFTP) is asynchronous and lives on
// the main thread's event loop. This is the one seam between them.
//
// How a call travels:
// - the worker copies the request's bulk bytes (a write's data) into a SharedArrayBuffer both
//   threads hold, posts {seq, method, args} on a MessagePort, then blocks in Atomics.wait on a
//   control word;
// - the main thread runs the async handler, copies the reply's bulk bytes (a read's data) into the
//   same shared buffer, posts {seq, value | error} on the port, then flips the control word and
//   Atomics.notify()s;
// - the worker wakes and takes the reply off the port synchronously (receiveMessageOnPort: it
//   never returns to its event loop while a call is pending).
// The shared buffer is reused from call to call. When a request or a reply does not fit, the side
// that needs more room allocates a larger SharedArrayBuffer and hands it over in the message; both
// sides use the new one from then on. One call is in flight per endpoint (the worker is blocked
// while it waits), so the buffer is never written by both sides at once: a handler may read its
// input view until its promise settles, and not after.
//
// Errors cross as data and are rebuilt on the worker's side: a Qcow2Error keeps its code, file,
// property and offset (bigint included); any other error keeps its name, message and string code.
// The worker blocks until the main thread replies: the handlers own their timeouts (SSH keepalive,
// per-call limits). Closing the host answers a pending call and every later one with an error.

import { MessagePort, MessageChannel, isMainThread, receiveMessageOnPort } from 'worker_threads';
import { ErrorData, errorFromData, errorToData } from '../model/errors';

/** What the worker needs: post it in workerData with `transferList` from createBridge. */
export interface BridgeEndpoint {
  readonly port: MessagePort;
  /** Int32 words: [0] reply state (0 waiting, 1 replied), [1] sequence number of the reply. */
  readonly control: SharedArrayBuffer;
  /** Bulk bytes of the current call, request or reply. */
  readonly data: SharedArrayBuffer;
}

/** A handler's reply: a structured-cloneable value, and optionally bulk bytes. */
export interface BridgeReply {
  value?: unknown;
  data?: Uint8Array;
}

/**
 * A main-thread handler. `input` is a view of the request's bulk bytes in the shared buffer, valid
 * until the returned promise settles (copy what must outlive it).
 */
export type BridgeHandler = (args: unknown[], input: Uint8Array | undefined) => Promise<BridgeReply | void>;

export interface BridgeOptions {
  /** Initial size of the shared data buffer (default 1 MiB); it grows as calls need. */
  initialBytes?: number;
}

interface Request {
  seq: number;
  method: string;
  args: unknown[];
  /** Length of the request's bulk bytes in the shared buffer, or -1 for none. */
  inputLength: number;
  /** A larger shared buffer the worker switched to for this request. */
  grow?: SharedArrayBuffer;
}

interface Reply {
  seq: number;
  value?: unknown;
  error?: ErrorData;
  /** Length of the reply's bulk bytes in the shared buffer, or -1 for none. */
  dataLength: number;
  grow?: SharedArrayBuffer;
}

const STATE = 0;
const SEQ = 1;
const WAITING = 0;
const REPLIED = 1;
const DEFAULT_BYTES = 1 << 20;

/** Copy `bytes` into `data`, or into a larger buffer when they do not fit; returns the buffer used. */
function put(data: SharedArrayBuffer, bytes: Uint8Array): SharedArrayBuffer {
  let target = data;
  if (bytes.length > data.byteLength) {
    let size = Math.max(data.byteLength, 4096);
    while (size < bytes.length) size *= 2;
    target = new SharedArrayBuffer(size);
  }
  new Uint8Array(target).set(bytes);
  return target;
}

/** The main thread's side: serves one worker's calls with `handlers`. */
export class BridgeHost {
  private data: SharedArrayBuffer;
  private readonly control: Int32Array;
  private closed = false;
  private pendingSeq: number | undefined;

  constructor(
    private readonly port: MessagePort,
    control: SharedArrayBuffer,
    data: SharedArrayBuffer,
    private readonly handlers: Readonly<Record<string, BridgeHandler>>,
  ) {
    this.control = new Int32Array(control);
    this.data = data;
    port.on('message', (req: Request) => void this.serve(req));
  }

  private async serve(req: Request): Promise<void> {
    if (req.grow !== undefined) this.data = req.grow;
    this.pendingSeq = req.seq;
    let reply: Reply;
    try {
      if (this.closed) throw new Error(`the bridge is closed: '${req.method}' was not run`);
      const handler = Object.prototype.hasOwnProperty.call(this.handlers, req.method) ? this.handlers[req.method] : undefined;
      if (handler === undefined) throw new Error(`no bridge handler for '${req.method}'`);
      const input = req.inputLength >= 0 ? new Uint8Array(this.data, 0, req.inputLength) : undefined;
      const r = (await handler(req.args, input)) ?? {};
      reply = { seq: req.seq, value: r.value, dataLength: -1 };
      if (r.data !== undefined) {
        const used = put(this.data, r.data);
        if (used !== this.data) reply.grow = this.data = used;
        reply.dataLength = r.data.length;
      }
    } catch (e) {
      reply = { seq: req.seq, error: errorToData(e), dataLength: -1 };
    }
    this.answer(reply);
  }

  private answer(reply: Reply): void {
    if (this.pendingSeq !== reply.seq) return; // answered already (closed meanwhile)
    this.pendingSeq = undefined;
    try {
      this.port.postMessage(reply);
    } catch (e) {
      // A value that cannot be cloned must still wake the worker.
      this.port.postMessage({ seq: reply.seq, error: errorToData(e), dataLength: -1 } satisfies Reply);
    }
    Atomics.store(this.control, SEQ, reply.seq);
    Atomics.store(this.control, STATE, REPLIED);
    Atomics.notify(this.control, STATE);
  }

  /** Let the process exit while the worker is idle. */
  unref(): void {
    this.port.unref();
  }

  /** Stop serving: a call in flight and every later one fail in the worker. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.pendingSeq !== undefined) {
      this.answer({ seq: this.pendingSeq, error: errorToData(new Error('the bridge was closed during the call')), dataLength: -1 });
    }
  }
}

/**
 * Create a bridge: the host serves `handlers` on this thread; pass `endpoint` to the worker in
 * workerData, with `transferList` in the Worker's options.
 */
export function createBridge(
  handlers: Readonly<Record<string, BridgeHandler>>,
  opts: BridgeOptions = {},
): { host: BridgeHost; endpoint: BridgeEndpoint; transferList: MessagePort[] } {
  const { port1, port2 } = new MessageChannel();
  const control = new SharedArrayBuffer(8);
  const data = new SharedArrayBuffer(opts.initialBytes ?? DEFAULT_BYTES);
  const host = new BridgeHost(port1, control, data, handlers);
  return { host, endpoint: { port: port2, control, data }, transferList: [port2] };
}

export interface CallOptions {
  /** Bulk bytes for the handler (its `input`). */
  input?: Uint8Array;
  /** Where to put the reply's bulk bytes; when absent a new Buffer is returned. */
  into?: Uint8Array;
}

export interface CallResult {
  value: unknown;
  /** The reply's bulk bytes: a new Buffer, or a view of `into`; undefined when the reply had none. */
  data?: Uint8Array;
}

/** The worker's side: blocking calls into the main thread. */
export class BridgeClient {
  private readonly port: MessagePort;
  private readonly control: Int32Array;
  private data: SharedArrayBuffer;
  private seq = 0;

  constructor(endpoint: BridgeEndpoint) {
    if (isMainThread) throw new Error('BridgeClient blocks its thread: use it in a worker, never on the main thread');
    this.port = endpoint.port;
    this.control = new Int32Array(endpoint.control);
    this.data = endpoint.data;
  }

  /** Call `method` on the main thread and wait for its reply; throws the handler's error. */
  call(method: string, args: unknown[] = [], opts: CallOptions = {}): CallResult {
    const seq = ++this.seq;
    const req: Request = { seq, method, args, inputLength: -1 };
    if (opts.input !== undefined) {
      const used = put(this.data, opts.input);
      if (used !== this.data) req.grow = this.data = used;
      req.inputLength = opts.input.length;
    }
    Atomics.store(this.control, STATE, WAITING);
    this.port.postMessage(req);
    let reply: Reply | undefined;
    for (;;) {
      Atomics.wait(this.control, STATE, WAITING);
      const m = receiveMessageOnPort(this.port);
      if (m === undefined) continue;
      reply = m.message as Reply;
      if (reply.seq === seq) break;
    }
    if (reply.grow !== undefined) this.data = reply.grow;
    if (reply.error !== undefined) throw errorFromData(reply.error);
    const out: CallResult = { value: reply.value };
    if (reply.dataLength >= 0) {
      const src = new Uint8Array(this.data, 0, reply.dataLength);
      if (opts.into !== undefined) {
        if (opts.into.length < reply.dataLength) {
          throw new Error(`bridge reply of '${method}' has ${reply.dataLength} bytes; the buffer given holds ${opts.into.length}`);
        }
        opts.into.set(src);
        out.data = opts.into.subarray(0, reply.dataLength);
      } else {
        out.data = Buffer.from(src);
      }
    }
    return out;
  }
}
