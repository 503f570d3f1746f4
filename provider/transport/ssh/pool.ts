// SSH connections, one per (host, port, user, credentials, jump host) per process, shared by
// every operation and bounded in channels. A connection is dialled on first use (retried up to
// dialErrorLimit, each dial limited to perDialTimeout), verified against the host key policy
// before any credential is sent, and closed after it has been idle for a while.
//
// Channels: sshd allows MaxSessions (default 10) session channels per connection; exec, the SFTP
// subsystem and the lock helper each take one for as long as they run. The pool keeps at most
// `maxChannels` (default 8) open per connection and queues the rest.

import { Duplex } from 'stream';
import { AnyAuthMethod, Client, ClientChannel, ConnectConfig, SFTPWrapper } from 'ssh2';
import { Qcow2Error } from '../../model/errors';
import { agentUsable, ConnectionArgs, parsedPrivateKey, ResolvedConnection, resolveConnection } from './connection';
import { hostKeyPolicy, defaultKnownHostsFiles } from './hostkeys';
import { shellCommand } from './quote';
import { Sftp } from './sftp';

export interface PoolOptions {
  /** known_hosts files read when a connection has no hostKey. Default ~/.ssh/known_hosts, /etc/ssh/ssh_known_hosts. */
  knownHostsFiles?: readonly string[];
  /** Channels open at once per connection. Default 8 (sshd's MaxSessions defaults to 10). */
  maxChannels?: number;
  /** Close a connection nobody has used for this long. Default 30 s. */
  idleTimeoutMs?: number;
  /** SSH keepalive interval; a connection missing 3 answers in a row is dropped. Default 15 s. */
  keepaliveIntervalMs?: number;
  /** The wait before the first redial; each next one waits 1.5 times longer, up to 5 s. Default 100 ms. */
  retryDelayMs?: number;
  /** The environment ($SSH_AUTH_SOCK). Default process.env. */
  env?: NodeJS.ProcessEnv;
}

/** Counters, for tests and benchmarks. */
export interface PoolStats {
  /** Completed SSH handshakes (authenticated connections). */
  handshakes: number;
  /** Failed dial attempts, all hosts. */
  dialErrors: number;
}

export interface ExecOptions {
  /** Bytes for the program's standard input; without it, stdin is closed at once. */
  stdin?: string | Uint8Array;
  /** Stop the program (SIGKILL through the channel, then close it) after this long. */
  timeoutMs?: number;
  /** Stop the program when aborted. */
  signal?: AbortSignal;
  /** Refuse more standard output than this. Default 64 MiB. */
  maxStdoutBytes?: number;
}

export interface ExecResult {
  /** Exit status, or null when the program was killed by a signal. */
  status: number | null;
  /** The signal that killed it, named as Node names them ("SIGKILL", "SIGTERM"...), or null. */
  signal: string | null;
  stdout: Buffer;
  /** Standard error as text (its last 64 KiB). */
  stderr: string;
}

/** A program running on the host, holding one channel until it exits or is closed. */
export interface RemoteProcess {
  readonly channel: ClientChannel;
  /** Settles when the channel closes: the exit status (null if killed or never reported). */
  readonly exited: Promise<{ status: number | null; signal: string | null }>;
}

const STDERR_KEEP = 64 * 1024;
/** Retries of a refused channel open (10, 20, 40, 80 ms apart). */
const OPEN_RETRIES = 4;

function connectionLost(label: string, during: string, cause?: unknown): Qcow2Error {
  return new Qcow2Error(
    'CONNECTION',
    `Lost the connection to ${label} during ${during}. Nothing after the last completed step reached the host; retry when it is reachable.`,
    cause !== undefined ? { cause } : {},
  );
}

/**
 * Send SIGKILL to the program of a session channel. ssh2's channel.signal() sends
 * nothing once our side has sent EOF (which exec does at once for programs without input), so
 * the request goes through the protocol object. sshd delivers it with killpg(), except in root
 * sessions (privilege separation is off after a root login, and sshd then refuses signals).
 */
function signalKill(ch: ClientChannel): void {
  const inner = ch as unknown as { outgoing?: { id: number; state: string }; _client?: { _protocol?: { signal(id: number, sig: string): void } } };
  try {
    const state = inner.outgoing?.state;
    if (state === 'open' || state === 'eof') inner._client?._protocol?.signal(inner.outgoing!.id, 'KILL');
  } catch {
    /* the channel is gone already */
  }
}

/** How long a stopped exec keeps its channel open waiting for the program's pid line. */
const PID_WAIT_MS = 5000;

/** A signal as Node names it: ssh2 already says "SIGTERM"; the SSH protocol says "TERM". */
function signalName(sig: unknown): string | null {
  if (typeof sig !== 'string' || sig === '') return null;
  return sig.startsWith('SIG') ? sig : `SIG${sig}`;
}

class Semaphore {
  private active = 0;
  private readonly queue: (() => void)[] = [];
  constructor(private readonly limit: number) {}

  async acquire(): Promise<() => void> {
    if (this.active >= this.limit) await new Promise<void>((r) => this.queue.push(r));
    else this.active++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      const next = this.queue.shift();
      if (next !== undefined) next();
      else this.active--;
    };
  }
}

/** One pooled SSH connection (shared by its leases). */
class Entry {
  client?: Client;
  ready: Promise<Client>;
  leases = 0;
  readonly channels: Semaphore;
  idle?: NodeJS.Timeout;
  closed = false;
  /** Why the connection ended, reported to operations that were using it. */
  lost?: Qcow2Error;
  sftp?: Promise<Sftp>;
  jump?: SshConnection;
  readonly singletons = new Map<string, unknown>();

  constructor(readonly rc: ResolvedConnection, readonly pool: SshPool, maxChannels: number) {
    this.channels = new Semaphore(maxChannels);
    this.ready = pool.dial(this);
  }
}

/** A lease on a pooled connection: run programs and open SFTP on the host. Release it when done. */
export class SshConnection {
  private released = false;

  /** @internal */
  constructor(private readonly entry: Entry) {}

  /** "user@host:port". */
  get label(): string {
    return this.entry.rc.label;
  }

  /** True while the underlying connection is up. */
  get alive(): boolean {
    return !this.entry.closed;
  }

  private client(during: string): Client {
    const c = this.entry.client;
    if (this.entry.closed || c === undefined) throw this.entry.lost ?? connectionLost(this.label, during);
    return c;
  }

  /** Open a session channel running `command` (already quoted), within the channel limit. */
  private async open(command: string, during: string): Promise<{ ch: ClientChannel; release: () => void }> {
    const release = await this.entry.channels.acquire();
    try {
      // sshd frees a session slot only when it garbage-collects the closed channel, after the
      // packets it read with our close: an open right behind a close can be refused. Retry briefly.
      for (let attempt = 0; ; attempt++) {
        const client = this.client(during);
        try {
          const ch = await new Promise<ClientChannel>((resolve, reject) => {
            try {
              client.exec(command, (err, stream) => (err ? reject(err) : resolve(stream)));
            } catch (e) {
              reject(e);
            }
          });
          ch.once('close', release);
          return { ch, release };
        } catch (e) {
          if (this.entry.closed || attempt >= OPEN_RETRIES) throw e;
          await new Promise((r) => setTimeout(r, 10 << attempt));
        }
      }
    } catch (e) {
      release();
      if (Qcow2Error.isInstance(e)) throw e;
      if (this.entry.closed) throw this.entry.lost ?? connectionLost(this.label, during, e);
      throw new Qcow2Error(
        'CONNECTION',
        `${this.label} refused a new channel for ${during} (sshd's MaxSessions may be below this pool's channel limit)`,
        { cause: e },
      );
    }
  }

  /**
   * Run `argv` on the host (each element quoted by shellQuote) and collect its output. A non-zero
   * exit status is a result, not an error; a lost connection, a timeout or an abort are errors.
   */
  async exec(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const program = argv[0] ?? '';
    const during = `'${program}'`;
    // The shell prints its pid, then becomes the program (same pid, leader of the session's
    // process group): a timeout can then kill the group even where sshd ignores signal requests.
    const { ch } = await this.open(`printf '%s\\n' "$$"; exec ${shellCommand(argv)}`, during);
    const maxOut = opts.maxStdoutBytes ?? 64 * 1024 * 1024;
    return new Promise<ExecResult>((resolve, reject) => {
      const out: Buffer[] = [];
      let outBytes = 0;
      let head: Buffer | undefined = Buffer.alloc(0);
      let pid: number | undefined;
      let err = '';
      let status: number | null | undefined;
      let signal: string | null = null;
      let failure: Qcow2Error | undefined;
      let groupKilled = false;
      let closeFallback: NodeJS.Timeout | undefined;
      // Kill the program's process group once both are known: that it must stop, and its pid. A
      // stop can come before the pid line has been read (an abort right after the start), and
      // sshd ignores the channel's signal request in root sessions, so the channel stays open
      // until the pid arrives (or PID_WAIT_MS pass, for a shell that never printed one).
      const killGroup = () => {
        if (groupKilled || failure === undefined || pid === undefined) return;
        groupKilled = true;
        if (closeFallback !== undefined) clearTimeout(closeFallback);
        if (Number.isInteger(pid) && pid > 1) void this.exec(['kill', '-s', 'KILL', '--', `-${pid}`]).catch(() => undefined);
        ch.close();
      };
      const stop = (why: Qcow2Error) => {
        if (failure !== undefined) return;
        failure = why;
        signalKill(ch);
        if (pid === undefined) closeFallback = setTimeout(() => ch.close(), PID_WAIT_MS);
        killGroup();
      };
      const timer =
        opts.timeoutMs !== undefined
          ? setTimeout(
              () => stop(new Qcow2Error('IO', `${during} on ${this.label} did not finish within ${opts.timeoutMs} ms; it was stopped`)),
              opts.timeoutMs,
            )
          : undefined;
      const onAbort = () => stop(new Qcow2Error('IO', `${during} on ${this.label} was cancelled; it was stopped`));
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      if (opts.signal?.aborted) onAbort();
      ch.on('data', (d: Buffer) => {
        if (head !== undefined) {
          head = Buffer.concat([head, d]);
          const nl = head.indexOf(0x0a);
          if (nl < 0) return;
          pid = Number(head.subarray(0, nl).toString('latin1'));
          d = head.subarray(nl + 1);
          head = undefined;
          killGroup();
        }
        outBytes += d.length;
        if (outBytes > maxOut) stop(new Qcow2Error('IO', `${during} on ${this.label} wrote more than ${maxOut} bytes; it was stopped`));
        else out.push(d);
      });
      ch.stderr.on('data', (d: Buffer) => {
        err = (err + d.toString('utf8')).slice(-STDERR_KEEP);
      });
      ch.on('exit', (code: number | null, sig?: string) => {
        status = typeof code === 'number' ? code : null;
        signal = signalName(sig);
      });
      ch.on('close', () => {
        if (timer !== undefined) clearTimeout(timer);
        if (closeFallback !== undefined) clearTimeout(closeFallback);
        opts.signal?.removeEventListener('abort', onAbort);
        if (failure !== undefined) return reject(failure);
        if (status === undefined) return reject(this.entry.lost ?? connectionLost(this.label, during));
        resolve({ status, signal, stdout: Buffer.concat(out), stderr: err });
      });
      if (opts.stdin !== undefined) ch.end(opts.stdin);
      else ch.end();
    });
  }

  /** Start `argv` on the host and hand back its channel (stdin/stdout/stderr); it holds a channel until closed. */
  async spawn(argv: readonly string[]): Promise<RemoteProcess> {
    const { ch } = await this.open(shellCommand(argv), `'${argv[0] ?? ''}'`);
    let status: number | null = null;
    let signal: string | null = null;
    ch.on('exit', (code: number | null, sig?: string) => {
      status = typeof code === 'number' ? code : null;
      signal = signalName(sig);
    });
    const exited = new Promise<{ status: number | null; signal: string | null }>((resolve) => ch.once('close', () => resolve({ status, signal })));
    return { channel: ch, exited };
  }

  /** The connection's SFTP session (opened once, shared; it holds one channel). */
  sftp(): Promise<Sftp> {
    const e = this.entry;
    if (e.sftp === undefined) {
      let p: Promise<Sftp> | undefined;
      p = (async () => {
        const release = await e.channels.acquire();
        try {
          const client = this.client('opening SFTP');
          const wrapper = await new Promise<SFTPWrapper>((resolve, reject) => {
            try {
              client.sftp((err, s) => (err ? reject(err) : resolve(s)));
            } catch (err) {
              reject(err);
            }
          });
          wrapper.once('close', () => {
            release();
            if (e.sftp === p) e.sftp = undefined;
          });
          return new Sftp(wrapper, this.label, () => (e.closed ? e.lost : undefined));
        } catch (err) {
          release();
          if (e.sftp === p) e.sftp = undefined;
          if (Qcow2Error.isInstance(err)) throw err;
          if (e.closed) throw e.lost ?? connectionLost(this.label, 'opening SFTP', err);
          throw new Qcow2Error(
            'CONNECTION',
            `${this.label} did not start its SFTP subsystem: check "Subsystem sftp" in the host's sshd_config`,
            { cause: err },
          );
        }
      })();
      e.sftp = p;
    }
    return e.sftp!;
  }

  /** A per-connection singleton (the lock helper), made on first use. */
  perConnection<T>(key: string, make: () => T): T {
    if (!this.entry.singletons.has(key)) this.entry.singletons.set(key, make());
    return this.entry.singletons.get(key) as T;
  }

  /** @internal A TCP stream to host:port opened from this host (direct-tcpip), for a jump. */
  forwardOut(host: string, port: number): Promise<Duplex> {
    const client = this.client(`opening a tunnel to ${host}:${port}`);
    return new Promise<Duplex>((resolve, reject) => {
      try {
        client.forwardOut('127.0.0.1', 0, host, port, (err, stream) => (err ? reject(err) : resolve(stream)));
      } catch (e) {
        reject(e);
      }
    });
  }

  /**
   * A stream to the unix socket `socketPath` on the host (OpenSSH stream-local forwarding,
   * direct-streamlocal@openssh.com, as `ssh -L LOCAL:REMOTE_SOCKET`): a QEMU monitor there, for
   * one. It takes no session slot (sshd's MaxSessions does not count it); it lasts until it is
   * closed or the connection ends. Rejects with CONNECTION naming the host and the socket.
   */
  openStreamLocal(socketPath: string): Promise<Duplex> {
    const during = `opening the socket ${socketPath}`;
    const client = this.client(during);
    return new Promise<Duplex>((resolve, reject) => {
      const fail = (err: unknown) => {
        if (this.entry.closed) return reject(this.entry.lost ?? connectionLost(this.label, during, err));
        const reason = (err as { reason?: unknown })?.reason;
        // OpenSSH answers "open failed" (2) both when nothing listens and when its configuration
        // forbids the forwarding; only other servers say "administratively prohibited" (1).
        const forbidden = 'sshd_config has "AllowStreamLocalForwarding no" (or "DisableForwarding yes")';
        const why =
          reason === 1
            ? `its sshd refuses stream-local forwarding: ${forbidden}; allow it ("AllowStreamLocalForwarding local")`
            : reason === 2
              ? `the host could not open it: the process that should listen there is not running, the path is wrong, ` +
                `${this.entry.rc.user} may not open it, or the host's ${forbidden}`
              : `the channel was refused (${(err as Error)?.message ?? String(err)})`;
        reject(new Qcow2Error('CONNECTION', `${this.label} could not connect to the socket ${socketPath}: ${why}`, { file: socketPath, cause: err }));
      };
      try {
        client.openssh_forwardOutStreamLocal(socketPath, (err, stream) => (err ? fail(err) : resolve(stream)));
      } catch (e) {
        fail(e);
      }
    });
  }

  /** Give the lease back (idempotent). The connection stays pooled until idle. */
  release(): void {
    if (this.released) return;
    this.released = true;
    this.entry.pool.releaseEntry(this.entry);
  }
}

type DialFailure = { error: Qcow2Error; retry: boolean };

function describeSocketError(e: NodeJS.ErrnoException, rc: ResolvedConnection): string {
  switch (e.code) {
    case 'ECONNREFUSED':
      return `connection refused: is sshd listening on port ${rc.port}?`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `the host name '${rc.host}' was not found`;
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
      return 'no route to the host';
    case 'ETIMEDOUT':
      return 'the connection timed out';
    case 'ECONNRESET':
    case 'EPIPE':
      return 'the host reset the connection';
    default:
      return `the connection failed (${e.code ?? 'socket error'})`;
  }
}

export class SshPool {
  readonly stats: PoolStats = { handshakes: 0, dialErrors: 0 };
  private readonly entries = new Map<string, Entry>();
  private readonly opts: Required<Omit<PoolOptions, 'knownHostsFiles' | 'env'>> & { knownHostsFiles: readonly string[]; env: NodeJS.ProcessEnv };

  constructor(opts: PoolOptions = {}) {
    this.opts = {
      knownHostsFiles: opts.knownHostsFiles ?? defaultKnownHostsFiles(),
      maxChannels: opts.maxChannels ?? 8,
      idleTimeoutMs: opts.idleTimeoutMs ?? 30_000,
      keepaliveIntervalMs: opts.keepaliveIntervalMs ?? 15_000,
      retryDelayMs: opts.retryDelayMs ?? 100,
      env: opts.env ?? process.env,
    };
  }

  /** A lease on the pooled connection for `args` (dialled now if there is none); release it when done. */
  async connect(args: ConnectionArgs): Promise<SshConnection> {
    const rc = resolveConnection(args, this.opts.env);
    return this.connectResolved(rc);
  }

  /** @internal */
  async connectResolved(rc: ResolvedConnection): Promise<SshConnection> {
    let e = this.entries.get(rc.poolKey);
    if (e === undefined || e.closed) {
      e = new Entry(rc, this, this.opts.maxChannels);
      this.entries.set(rc.poolKey, e);
    }
    e.leases++;
    if (e.idle !== undefined) {
      clearTimeout(e.idle);
      e.idle = undefined;
    }
    try {
      await e.ready;
    } catch (err) {
      this.releaseEntry(e);
      throw err;
    }
    return new SshConnection(e);
  }

  /** @internal */
  releaseEntry(e: Entry): void {
    e.leases--;
    if (e.leases > 0 || e.closed) return;
    e.idle = setTimeout(() => this.closeEntry(e), this.opts.idleTimeoutMs);
    e.idle.unref();
  }

  private closeEntry(e: Entry, why?: Qcow2Error): void {
    if (e.idle !== undefined) clearTimeout(e.idle);
    if (!e.closed) {
      e.closed = true;
      e.lost ??= why ?? new Qcow2Error('CONNECTION', `The connection to ${e.rc.label} was closed`);
    }
    if (this.entries.get(e.rc.poolKey) === e) this.entries.delete(e.rc.poolKey);
    e.client?.end();
    e.jump?.release();
    e.jump = undefined;
  }

  /** Close every pooled connection (leases still held fail their next operation). */
  async closeAll(): Promise<void> {
    const all = [...this.entries.values()];
    const closed = all.map(
      (e) =>
        new Promise<void>((resolve) => {
          if (e.client === undefined || e.closed) return resolve();
          e.client.once('close', () => resolve());
          setTimeout(resolve, 2000).unref();
        }),
    );
    for (const e of all) this.closeEntry(e);
    await Promise.all(closed);
  }

  /** @internal Dial with retries: transient failures are retried up to dialErrorLimit. */
  async dial(e: Entry): Promise<Client> {
    const rc = e.rc;
    const policy = hostKeyPolicy(
      { host: rc.host, port: rc.port, property: rc.property, ...(rc.hostKey !== undefined ? { hostKey: rc.hostKey } : {}) },
      this.opts.knownHostsFiles,
    );
    let delay = this.opts.retryDelayMs;
    for (let attempt = 1; ; attempt++) {
      let f: DialFailure;
      try {
        const client = await this.dialOnce(e, policy);
        this.stats.handshakes++;
        return client;
      } catch (err) {
        f = err as DialFailure;
        if (f.error === undefined) f = { error: new Qcow2Error('CONNECTION', `Could not connect to ${rc.label}`, { cause: err }), retry: false };
      }
      this.stats.dialErrors++;
      const limitReached = rc.dialErrorLimit !== -1 && attempt >= rc.dialErrorLimit;
      if (!f.retry || limitReached) {
        this.closeEntry(e, f.error);
        if (f.retry) {
          throw new Qcow2Error(
            'CONNECTION',
            `${f.error.message} (gave up after ${attempt} attempt${attempt === 1 ? '' : 's'}; ${rc.property}.dialErrorLimit is ${rc.dialErrorLimit})`,
            { cause: f.error },
          );
        }
        throw f.error;
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 1.5, 5000);
    }
  }

  private async dialOnce(e: Entry, policy: ReturnType<typeof hostKeyPolicy>): Promise<Client> {
    const rc = e.rc;
    let sock: Duplex | undefined;
    if (rc.proxy !== undefined) {
      if (e.jump === undefined || !e.jump.alive) {
        e.jump?.release();
        e.jump = undefined;
        try {
          e.jump = await this.connectResolved(rc.proxy);
        } catch (err) {
          // The jump host has its own retries: do not multiply them.
          throw { error: err as Qcow2Error, retry: false } satisfies DialFailure;
        }
      }
      try {
        sock = await e.jump.forwardOut(rc.host, rc.port);
      } catch (err) {
        const why = Qcow2Error.isInstance(err) ? err.message : `the jump host ${rc.proxy.label} could not open a tunnel to ${rc.host}:${rc.port}`;
        throw { error: new Qcow2Error('CONNECTION', `Could not connect to ${rc.label}: ${why}`, { cause: err }), retry: true } satisfies DialFailure;
      }
    }
    const auth: AnyAuthMethod[] = [];
    const tried: string[] = [];
    if (rc.privateKey !== undefined) {
      auth.push({ type: 'publickey', username: rc.user, key: parsedPrivateKey(rc) ?? rc.privateKey });
      tried.push(`the private key ${rc.keyFingerprint}`);
    }
    if (agentUsable(rc.agentSocketPath)) {
      auth.push({ type: 'agent', username: rc.user, agent: rc.agentSocketPath });
      tried.push('the keys of the SSH agent');
    }
    for (const id of rc.identities ?? []) {
      auth.push({ type: 'publickey', username: rc.user, key: id.key });
      tried.push(`the key ${id.name}`);
    }
    if (rc.password !== undefined) {
      const password = rc.password;
      auth.push({ type: 'password', username: rc.user, password });
      auth.push({
        type: 'keyboard-interactive',
        username: rc.user,
        prompt: (_name, _instructions, _lang, prompts, finish) => finish(prompts.map(() => password)),
      });
      tried.push('the password');
    }
    if (auth.length === 0) {
      throw {
        error: new Qcow2Error(
          'AUTH',
          rc.identities !== undefined
            ? `No credentials to log in to ${rc.label}: no SSH agent (SSH_AUTH_SOCK) and no unencrypted key in ~/.ssh (id_ed25519, id_ecdsa, id_rsa)`
            : `No credentials to log in to ${rc.label}: set ${rc.property}.privateKey, ${rc.property}.password, or run an SSH agent (SSH_AUTH_SOCK or ${rc.property}.agentSocketPath)`,
          { property: `${rc.property}.privateKey` },
        ),
        retry: false,
      } satisfies DialFailure;
    }

    const client = new Client();
    let verdict: Qcow2Error | undefined;
    const config: ConnectConfig = {
      host: rc.host,
      port: rc.port,
      username: rc.user,
      authHandler: auth,
      readyTimeout: rc.perDialTimeoutMs,
      keepaliveInterval: this.opts.keepaliveIntervalMs,
      keepaliveCountMax: 3,
      algorithms: { serverHostKey: policy.algorithms as NonNullable<ConnectConfig['algorithms']>['serverHostKey'] },
      hostVerifier: (key: Buffer) => {
        verdict = policy.verify(key);
        return verdict === undefined;
      },
      ...(sock !== undefined ? { sock } : {}),
    };
    return new Promise<Client>((resolve, reject) => {
      let settled = false;
      const fail = (err: unknown) => {
        if (settled) return;
        settled = true;
        client.end();
        sock?.destroy();
        // ssh2 records the server's identification line once it has read it.
        const sawBanner = (client as unknown as { _remoteVer?: string })._remoteVer !== undefined;
        reject(this.classify(rc, err, verdict, tried, sawBanner));
      };
      client.once('ready', () => {
        if (settled) return;
        settled = true;
        e.client = client;
        client.on('error', (err) => this.closeEntry(e, connectionLost(rc.label, 'an operation', err)));
        client.on('close', () => this.closeEntry(e, connectionLost(rc.label, 'an operation')));
        resolve(client);
      });
      client.on('error', fail);
      client.on('close', () => fail(undefined));
      try {
        client.connect(config);
      } catch (err) {
        fail(err);
      }
    });
  }

  private classify(rc: ResolvedConnection, err: unknown, verdict: Qcow2Error | undefined, tried: string[], sawBanner: boolean): DialFailure {
    if (verdict !== undefined) return { error: verdict, retry: false };
    const x = (err ?? {}) as NodeJS.ErrnoException & { level?: string };
    const at = `Could not connect to ${rc.label}`;
    if (x.level === 'client-authentication') {
      return {
        error: new Qcow2Error(
          'AUTH',
          `${rc.label} refused the login: it accepted none of ${tried.join(', ')}. Check ${rc.property}.user and that the key is ` +
            `in that user's ~/.ssh/authorized_keys on the host (or that the password is right).`,
          { property: `${rc.property}.user` },
        ),
        retry: false,
      };
    }
    if (x.level === 'client-socket') return { error: new Qcow2Error('CONNECTION', `${at}: ${describeSocketError(x, rc)}`, { cause: err }), retry: true };
    if (x.level === 'client-timeout') {
      return {
        error: new Qcow2Error('CONNECTION', `${at}: no SSH session within ${rc.perDialTimeoutMs / 1000} s (${rc.property}.perDialTimeout)`, { cause: err }),
        retry: true,
      };
    }
    if (!sawBanner || x.message === 'Connection lost before handshake') {
      return {
        error: new Qcow2Error('CONNECTION', `${at}: the host closed the connection before the SSH handshake (sshd busy: MaxStartups, or not an SSH server)`, {
          cause: err,
        }),
        retry: true,
      };
    }
    if (x.level === 'handshake' || x.level === 'protocol') {
      return {
        error: new Qcow2Error('CONNECTION', `${at}: the SSH handshake failed (${x.message.replace(/^Handshake failed: /, '')})`, { cause: err }),
        retry: false,
      };
    }
    return { error: new Qcow2Error('CONNECTION', `${at}: the connection closed during the handshake`, { cause: err }), retry: true };
  }
}

let shared: SshPool | undefined;

/** The process-wide pool: one connection per host and credentials in this process. */
export function sshPool(): SshPool {
  shared ??= new SshPool();
  return shared;
}
