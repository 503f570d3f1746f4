// A QMP client: QEMU's JSON monitor protocol over a unix socket or any Duplex stream (an SSH
// stream-local channel to a socket on a remote host). It reads the greeting, negotiates
// capabilities, matches responses to commands by id, delivers events, and bounds every wait.
//
// The protocol (docs/interop/qmp-spec.rst): the server greets with {"QMP": {version,
// capabilities}}; only qmp_capabilities is accepted until it is sent; then each command
// {"execute", "arguments", "id"} gets exactly one {"return", "id"} or {"error": {class, desc},
// "id"}; {"event", "data", "timestamp"} may arrive at any time. Without out-of-band execution
// QEMU answers commands in the order received. A monitor serves one client at a time: a second
// client is accepted by the kernel but greeted only after the first leaves.
//
// Every error names the socket (or the stream's label) and says what to do; a QEMU error keeps
// QMP's class and desc.

import * as fs from 'fs';
import * as net from 'net';
import { Duplex } from 'stream';
import { Qcow2Error } from '../../model/errors';
import { encodeJson, JsonSplitter, parseJson, QmpObject, QmpValue } from './json';

export interface QmpOptions {
  /** Milliseconds allowed to connect, receive the greeting and negotiate. Default 10000. */
  connectTimeoutMs?: number;
  /** Milliseconds each command may take unless it says otherwise. Default 30000. */
  commandTimeoutMs?: number;
  /** The input property that named the socket (e.g. "qmpSocket"), carried by errors. */
  property?: string;
  /** The longest message accepted, in characters. Default 64 MiB. */
  maxMessageChars?: number;
}

export interface ExecuteOptions {
  /** Overrides QmpOptions.commandTimeoutMs for this command. */
  timeoutMs?: number;
  /** Stop waiting when aborted (QEMU may still carry the command out). */
  signal?: AbortSignal;
}

/** What QEMU says about itself in the greeting. */
export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  /** Capabilities QEMU offers (we enable none of them: "oob" is not needed here). */
  capabilities: string[];
}

/** An asynchronous event (BLOCK_JOB_COMPLETED, SHUTDOWN, BLOCK_IMAGE_CORRUPTED...). */
export interface QmpEvent {
  event: string;
  data: QmpObject;
  /** When QEMU emitted it: seconds and microseconds since the epoch. */
  timestamp: { seconds: number; microseconds: number };
}

/** QEMU's answer to a failed command: its error class and description. */
export class QmpError extends Qcow2Error {
  /** QMP's error class: GenericError, CommandNotFound, DeviceNotFound, ... */
  readonly errorClass: string;
  /** QMP's human-readable description. */
  readonly desc: string;
  /** The command that failed. */
  readonly command: string;

  constructor(where: string, command: string, errorClass: string, desc: string, details: { file?: string; property?: string }) {
    super('QMP', `QEMU refused '${command}' on ${where}: ${desc} (${errorClass})`, details);
    this.name = 'QmpError';
    this.errorClass = errorClass;
    this.desc = desc;
    this.command = command;
  }
}

/** True for a QMP command error from any copy of this module (code check, not instanceof). */
export function isQmpError(e: unknown): e is QmpError {
  return Qcow2Error.isInstance(e) && e.code === 'QMP';
}

interface Pending {
  command: string;
  resolve(v: QmpValue): void;
  reject(e: Error): void;
  cleanup(): void;
}

const DEFAULT_CONNECT_MS = 10_000;
const DEFAULT_COMMAND_MS = 30_000;
const DEFAULT_MAX_CHARS = 64 * 1024 * 1024;
/** sizeof(sockaddr_un.sun_path) - 1 on Linux. */
const MAX_SOCKET_PATH = 107;

function isObject(v: unknown): v is QmpObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function seconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${ms} ms`;
}

export class QmpClient {
  /** What errors call the endpoint: "the QMP socket /run/vm.qmp". */
  readonly where: string;
  /** The greeting QEMU sent (set once connected). */
  greeting!: QmpGreeting;

  private readonly splitter = new JsonSplitter();
  private readonly pending = new Map<string, Pending>();
  /** Ids in the order sent: a response without id (a parse error) belongs to the oldest. */
  private readonly order: string[] = [];
  private readonly listeners = new Set<(e: QmpEvent) => void>();
  private readonly opts: Required<Omit<QmpOptions, 'property'>> & { property?: string };
  private seq = 0;
  private negotiated = false;
  private lost?: Qcow2Error;
  private onGreeting?: (g: QmpObject) => void;
  private failGreeting?: (e: Error) => void;
  /** Event waiters, told when the connection is lost. */
  private readonly waiters = new Set<(e: Error) => void>();
  private closing = false;

  private constructor(
    private readonly stream: Duplex,
    where: string,
    private readonly file: string | undefined,
    opts: QmpOptions,
  ) {
    this.where = where;
    this.opts = {
      connectTimeoutMs: opts.connectTimeoutMs ?? DEFAULT_CONNECT_MS,
      commandTimeoutMs: opts.commandTimeoutMs ?? DEFAULT_COMMAND_MS,
      maxMessageChars: opts.maxMessageChars ?? DEFAULT_MAX_CHARS,
      ...(opts.property !== undefined ? { property: opts.property } : {}),
    };
    stream.on('data', (d: Buffer) => this.receive(d));
    stream.on('error', (e: NodeJS.ErrnoException) => this.fail(this.streamError(e)));
    stream.on('close', () => this.fail(this.closedError()));
    stream.on('end', () => this.fail(this.closedError()));
  }

  /**
   * Connect to QEMU's QMP unix socket at `socketPath`, read the greeting and negotiate. Rejects
   * with CONNECTION naming the socket when there is none, nobody listens, it is not QMP, or QEMU
   * does not greet in time (another client holds the monitor).
   */
  static async connect(socketPath: string, opts: QmpOptions = {}): Promise<QmpClient> {
    const where = `the QMP socket ${socketPath}`;
    const details = { file: socketPath, ...(opts.property !== undefined ? { property: opts.property } : {}) };
    if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
      throw new Qcow2Error(
        'INVALID_OPTION',
        `${where}: the path is longer than the ${MAX_SOCKET_PATH} bytes a unix socket address holds; give a shorter path (QEMU cannot have created it there)`,
        details,
      );
    }
    const timeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_MS;
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection({ path: socketPath });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Qcow2Error('CONNECTION', `Could not connect to ${where} within ${seconds(timeoutMs)}`, details));
      }, timeoutMs);
      s.once('connect', () => {
        clearTimeout(timer);
        s.removeAllListeners('error');
        resolve(s);
      });
      s.once('error', (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(connectError(where, socketPath, e, details));
      });
    });
    return QmpClient.start(sock, where, socketPath, opts);
  }

  /**
   * Speak QMP over an already open stream (an SSH channel to the socket, a socket pair). `label`
   * says what the stream leads to, for messages: "the QMP socket /run/vm.qmp on root@host:22".
   */
  static over(stream: Duplex, label: string, opts: QmpOptions & { file?: string } = {}): Promise<QmpClient> {
    return QmpClient.start(stream, label, opts.file, opts);
  }

  private static async start(stream: Duplex, where: string, file: string | undefined, opts: QmpOptions): Promise<QmpClient> {
    const c = new QmpClient(stream, where, file, opts);
    try {
      await c.handshake();
    } catch (e) {
      c.destroy();
      throw e;
    }
    return c;
  }

  private details(): { file?: string; property?: string } {
    return {
      ...(this.file !== undefined ? { file: this.file } : {}),
      ...(this.opts.property !== undefined ? { property: this.opts.property } : {}),
    };
  }

  private async handshake(): Promise<void> {
    const ms = this.opts.connectTimeoutMs;
    const greeting = await new Promise<QmpObject>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.onGreeting = undefined;
        reject(
          new Qcow2Error(
            'CONNECTION',
            `Connected to ${this.where}, but QEMU sent no greeting within ${seconds(ms)}. A QMP monitor serves one client at a ` +
              `time: another client (libvirt, an agent, a forgotten session) may hold it. Give this tool a monitor of its own ` +
              `(-qmp unix:PATH,server=on,wait=off) or close the other client.`,
            this.details(),
          ),
        );
      }, ms);
      this.onGreeting = (g) => {
        clearTimeout(timer);
        resolve(g);
      };
      this.failGreeting = (e) => {
        clearTimeout(timer);
        reject(e);
      };
    });
    const qmp = greeting.QMP;
    if (!isObject(qmp) || !isObject(qmp.version) || !isObject(qmp.version.qemu)) {
      throw new Qcow2Error('CONNECTION', `${this.where} is not a QMP monitor: its first message is not QEMU's greeting`, this.details());
    }
    const v = qmp.version.qemu;
    this.greeting = {
      version: {
        qemu: { major: Number(v.major), minor: Number(v.minor), micro: Number(v.micro) },
        package: typeof qmp.version.package === 'string' ? qmp.version.package : '',
      },
      capabilities: Array.isArray(qmp.capabilities) ? qmp.capabilities.filter((x): x is string => typeof x === 'string') : [],
    };
    await this.send('qmp_capabilities', undefined, { timeoutMs: ms });
    this.negotiated = true;
  }

  /** QEMU's version as "7.2.22". */
  get version(): string {
    const q = this.greeting.version.qemu;
    return `${q.major}.${q.minor}.${q.micro}`;
  }

  /** True until the connection is closed or lost. */
  get open(): boolean {
    return this.lost === undefined;
  }

  /**
   * Run a QMP command and return its "return" value. Rejects with QmpError (code QMP) when QEMU
   * answers with an error, and with CONNECTION when the connection is lost or QEMU does not
   * answer in time (the command may then still take effect).
   */
  execute<T = QmpValue>(command: string, args?: Record<string, unknown>, opts: ExecuteOptions = {}): Promise<T> {
    if (!this.negotiated) throw new Error('QmpClient.execute before the handshake');
    return this.send(command, args, opts) as Promise<T>;
  }

  private send(command: string, args: Record<string, unknown> | undefined, opts: ExecuteOptions): Promise<QmpValue> {
    if (this.lost !== undefined) return Promise.reject(this.lost);
    const id = `qcow2-${++this.seq}`;
    const ms = opts.timeoutMs ?? this.opts.commandTimeoutMs;
    return new Promise<QmpValue>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const onAbort = () => {
        this.forget(id);
        reject(new Qcow2Error('IO', `'${command}' on ${this.where} was cancelled; QEMU may still carry it out`, this.details()));
      };
      const entry: Pending = {
        command,
        resolve,
        reject,
        cleanup: () => {
          if (timer !== undefined) clearTimeout(timer);
          opts.signal?.removeEventListener('abort', onAbort);
        },
      };
      if (opts.signal?.aborted) return onAbort();
      if (ms > 0) {
        timer = setTimeout(() => {
          this.forget(id);
          reject(
            new Qcow2Error(
              'CONNECTION',
              `QEMU did not answer '${command}' on ${this.where} within ${seconds(ms)}: the process may be stopped or ` +
                `overloaded. The command may still take effect; check the VM's state before retrying.`,
              this.details(),
            ),
          );
        }, ms);
      }
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, entry);
      this.order.push(id);
      const msg = encodeJson({ execute: command, ...(args !== undefined ? { arguments: args } : {}), id });
      this.stream.write(msg + '\n');
    });
  }

  /** Stop waiting for `id` (timed out or aborted); a late answer is dropped. */
  private forget(id: string): void {
    const p = this.pending.get(id);
    if (p === undefined) return;
    p.cleanup();
    this.pending.delete(id);
  }

  /** Call `listener` for every event until the returned function is called. */
  onEvent(listener: (e: QmpEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * The next event named `name` (and matching `filter`) arriving after this call. Rejects with
   * CONNECTION after `timeoutMs` (default: the command timeout) or when the connection is lost.
   */
  waitForEvent(name: string, opts: { filter?: (e: QmpEvent) => boolean; timeoutMs?: number } = {}): Promise<QmpEvent> {
    if (this.lost !== undefined) return Promise.reject(this.lost);
    const ms = opts.timeoutMs ?? this.opts.commandTimeoutMs;
    return new Promise<QmpEvent>((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        off();
        this.waiters.delete(onLost);
      };
      const off = this.onEvent((e) => {
        if (e.event !== name || (opts.filter !== undefined && !opts.filter(e))) return;
        done();
        resolve(e);
      });
      const onLost = (err: Error) => {
        done();
        reject(err);
      };
      this.waiters.add(onLost);
      const timer = setTimeout(() => {
        done();
        reject(new Qcow2Error('CONNECTION', `No ${name} event from ${this.where} within ${seconds(ms)}`, this.details()));
      }, ms);
    });
  }

  private receive(chunk: Buffer): void {
    let texts: string[];
    try {
      texts = this.splitter.push(chunk, this.opts.maxMessageChars);
    } catch (e) {
      this.protocolError(`it sent something that is not QMP (${(e as Error).message})`);
      return;
    }
    for (const text of texts) {
      let msg: QmpValue;
      try {
        msg = parseJson(text);
      } catch (e) {
        this.protocolError(`it sent malformed JSON (${(e as Error).message})`);
        return;
      }
      if (!isObject(msg)) continue;
      this.dispatch(msg);
      if (this.lost !== undefined) return;
    }
  }

  private dispatch(msg: QmpObject): void {
    if (this.onGreeting !== undefined) {
      const g = this.onGreeting;
      this.onGreeting = undefined;
      this.failGreeting = undefined;
      g(msg);
      return;
    }
    if (typeof msg.event === 'string') {
      const ts = isObject(msg.timestamp) ? msg.timestamp : {};
      const ev: QmpEvent = {
        event: msg.event,
        data: isObject(msg.data) ? msg.data : {},
        timestamp: { seconds: Number(ts.seconds ?? 0), microseconds: Number(ts.microseconds ?? 0) },
      };
      for (const l of [...this.listeners]) {
        try {
          l(ev);
        } catch {
          /* a listener's failure is its own */
        }
      }
      return;
    }
    if (!('return' in msg) && !('error' in msg)) return; // unknown message kinds are ignored, as the spec asks
    let id = typeof msg.id === 'string' ? msg.id : undefined;
    if (id === undefined) {
      // QEMU answers input it could not parse with an error without id; it is the oldest command's.
      while (this.order.length > 0 && !this.pending.has(this.order[0]!)) this.order.shift();
      id = this.order[0];
    }
    if (id === undefined) return;
    const p = this.pending.get(id);
    const at = this.order.indexOf(id);
    if (at >= 0) this.order.splice(at, 1);
    if (p === undefined) return; // answered after we stopped waiting
    this.pending.delete(id);
    p.cleanup();
    if ('return' in msg) return p.resolve(msg.return!);
    const err = isObject(msg.error) ? msg.error : {};
    const cls = typeof err.class === 'string' ? err.class : 'GenericError';
    const desc = typeof err.desc === 'string' ? err.desc : 'no description';
    p.reject(new QmpError(this.where, p.command, cls, desc, this.details()));
  }

  private protocolError(why: string): void {
    this.fail(new Qcow2Error('CONNECTION', `${this.where} is not speaking QMP: ${why}`, this.details()));
    this.stream.destroy();
  }

  private closedError(): Qcow2Error {
    if (this.closing) return new Qcow2Error('CONNECTION', `The connection to ${this.where} was closed`, this.details());
    const cmds = [...this.pending.values()].map((p) => `'${p.command}'`);
    const during = cmds.length > 0 ? ` while ${cmds.join(', ')} ${cmds.length === 1 ? 'was' : 'were'} pending` : '';
    const unknown =
      cmds.length > 0 ? ' Whether the command took effect is unknown: check the image (qemu-img info -U) before retrying.' : '';
    const notGreeted = this.greeting === undefined && this.onGreeting !== undefined ? ' before greeting (is it a QMP monitor?)' : '';
    return new Qcow2Error(
      'CONNECTION',
      `${this.where} closed${notGreeted}${during}: the QEMU process exited or closed its monitor.${unknown}`,
      this.details(),
    );
  }

  private streamError(e: NodeJS.ErrnoException): Qcow2Error {
    if (e.code === 'EPIPE' || e.code === 'ECONNRESET') return this.closedError();
    return new Qcow2Error('CONNECTION', `The connection to ${this.where} failed (${e.code ?? 'stream error'})`, { ...this.details(), cause: e });
  }

  /** The connection is gone: every waiter learns why, once. */
  private fail(err: Qcow2Error): void {
    if (this.lost !== undefined) return;
    this.lost = err;
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.order.length = 0;
    for (const p of pending) {
      p.cleanup();
      p.reject(err);
    }
    for (const w of [...this.waiters]) w(err);
    const fg = this.failGreeting;
    this.failGreeting = undefined;
    if (this.onGreeting !== undefined) {
      this.onGreeting = undefined;
      fg?.(err);
    }
  }

  private destroy(): void {
    this.closing = true;
    this.fail(new Qcow2Error('CONNECTION', `The connection to ${this.where} was closed`, this.details()));
    this.stream.destroy();
  }

  /** Close the connection; commands still pending fail with CONNECTION. Resolves once closed. */
  close(): Promise<void> {
    if (this.stream.destroyed) {
      this.destroy();
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      const t = setTimeout(() => this.stream.destroy(), 1000);
      this.stream.once('close', () => {
        clearTimeout(t);
        resolve();
      });
      this.closing = true;
      this.fail(new Qcow2Error('CONNECTION', `The connection to ${this.where} was closed`, this.details()));
      this.stream.end();
    });
  }
}

function connectError(where: string, socketPath: string, e: NodeJS.ErrnoException, details: { file?: string; property?: string }): Qcow2Error {
  const name = details.property ?? 'the socket path';
  switch (e.code) {
    case 'ENOENT':
      return new Qcow2Error(
        'CONNECTION',
        `No QMP socket at ${socketPath}: the VM is not running, or it was started without this monitor ` +
          `(-qmp unix:${socketPath},server=on,wait=off); check ${name}`,
        details,
      );
    case 'ECONNREFUSED':
      if (!isSocketFile(socketPath)) {
        return new Qcow2Error('CONNECTION', `${socketPath} is not a socket: ${name} must be the path of QEMU's QMP unix socket`, details);
      }
      return new Qcow2Error(
        'CONNECTION',
        `Nothing is listening on ${where}: the QEMU process that created it has exited (the file is left over)`,
        details,
      );
    case 'EACCES':
    case 'EPERM':
      return new Qcow2Error('CONNECTION', `Permission denied opening ${where}: run as a user who may open it (QEMU's user or root)`, details);
    case 'ENOTSOCK':
      return new Qcow2Error('CONNECTION', `${socketPath} is not a socket: ${name} must be the path of QEMU's QMP unix socket`, details);
    default:
      return new Qcow2Error('CONNECTION', `Could not connect to ${where} (${e.code ?? 'socket error'})`, { ...details, cause: e });
  }
}

function isSocketFile(p: string): boolean {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return true; // cannot tell: keep the socket reading
  }
}
