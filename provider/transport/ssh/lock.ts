// QEMU's image locks on a remote host, and the few file facts SFTP cannot give, from one short
// helper per connection run over SSH exec.
//
// QEMU 7.2 locks images with OFD byte-range locks (QCOW2-NOTES.md §7, provider/qcow2/io/lock.ts):
// one-byte shared read locks at 100+i ("I use permission i") and 200+i ("I do not share
// permission i"), conflicts probed with F_OFD_GETLK for a write lock. OFD locks belong to an open
// file description on the host, so they must be taken by a process on the host: SFTP has no lock
// request, and no agent of ours is installed there. Instead one helper per connection runs in
// Perl (perl-base is part of every Debian and Ubuntu system): `perl -e SCRIPT` started over SSH
// exec, holding one channel. It opens each image read-only, takes and probes the lock bytes this
// module sends it (so QEMU's protocol is stated once, here and in qcow2/io/lock.ts), and holds them
// while its standard input stays open. When we release a lock it closes that file; when the
// channel closes - on purpose, or because the connection dropped or this process died - sshd
// closes the helper's stdin, it exits, and the kernel releases every lock it held. So a lock is
// never left behind, and a lost connection loses the lock: `held` turns false and later
// changes fail, so a caller must not write through SFTP once its lock is gone.
//
// Both directions hold as locally: while the helper holds a write lock, QEMU (a VM, qemu-nbd,
// qemu-img) refuses to open the image; while QEMU holds it, lock() fails with LOCKED in QEMU's
// own words, naming the holding processes the helper can see in /proc/<pid>/fdinfo (all of them
// when it runs as root; its user's otherwise).
//
// The same helper answers what SFTP (protocol 3) has no request for: a file's identity (device
// and inode) and allocated blocks (stat), its data and hole extents (lseek SEEK_DATA/SEEK_HOLE,
// as QEMU's file driver finds them), and fsync of a folder (after a new name is linked in).
//
// It also owns the temporary files and folders a new image is built in until they are published
// or removed: when its standard input closes (the connection dropped, or this process was killed)
// it removes the ones still owned, so a create cut off midway leaves nothing on the host. Only
// names we created (an exclusive create or a new folder succeeded) are ever owned; a folder is
// removed with the files directly in it.
//
// Wire protocol (one line each way per request; paths and names hex-encoded so any byte passes):
//   -> O id PATHHEX              open read-only     <- O id ok | O id err ERRNO
//   -> T id TAKE PROBE DROP      byte lists "100,101" or "-": take TAKE (read locks), probe PROBE
//                                in order (write-lock test), then drop DROP
//                                <- T id ok | T id busy BYTE | T id conflict BYTE HOLDERS | T id err ERRNO
//                                (busy: a write lock on a byte we tried to take; on any failure the
//                                bytes taken by this request are dropped again)
//   -> C id                      close (releases)   <- C id ok
//   -> S id PATHHEX FOLLOW       stat (1) or lstat (0)
//                                <- S id ok KIND SIZE BLOCKS DEV INO | S id none | S id err ERRNO
//                                (KIND f file, d folder, l link, o other; BLOCKS in 512-byte units)
//   -> E id PATHHEX OFF LEN MAX  up to MAX extents of [OFF, OFF+LEN) clipped to the file's size
//                                <- E id ok OFF:LEN:d|h,... | E id ok - | E id err ERRNO
//   -> H id PATHHEX MAX          a regular file's stat and first bytes, opened without waiting:
//                                MAX bytes, or its first cluster when it is a qcow2 image (at most
//                                2 MiB); trailing zeros left out (LEN says how many bytes were read)
//                                <- H id ok SIZE BLOCKS DEV INO LEN HEX|- | H id notreg | H id err ERRNO
//   -> W id DIRHEX MAX           the regular files of a folder (at most MAX entries read), each with
//                                its identity and, for a qcow2 file, the backing name its header stores
//                                <- W id ok MORE NAMEHEX:DEV:INO:BACKINGHEX|-,... | W id ok MORE - | W id err ERRNO
//   -> D id PATHHEX              fsync a folder     <- D id ok | D id err ERRNO
//   -> P id PATHHEX              own a temporary file or folder we created   <- P id ok
//   -> F id PATHHEX              forget it (published or removed)            <- F id ok
//   <- R 1 PID                   first line: ready; or "X REASONHEX" and exit when unsupported
// HOLDERS is "-" or "pid:COMMHEX,..." (OFD locks show pid -1 in F_OFD_GETLK and /proc/locks).

import { Qcow2Error } from '../../model/errors';
import { LOCK_MODES, LOCK_PERM_BASE, LOCK_SHARED_BASE, LockMode, lockBytes, PERMISSIONS, type Permission } from '../../qcow2/io/lock';
import type { RemoteProcess, SshConnection } from './pool';

/** The helper, run as `perl -e SCRIPT`. Needs only perl-base (strict, POSIX, IO::Handle). */
export const HOST_HELPER = String.raw`
use strict;
use POSIX ();
use IO::Handle ();
$| = 1;
my (%fh, %own);
sub hx { unpack('H*', $_[0]) }
my $arch = (POSIX::uname())[4];
if ($^O ne 'linux' || $arch !~ /^(x86_64|aarch64|riscv64|ppc64le|ppc64|s390x|loongarch64)$/ || length(pack('q', 0)) != 8) {
  print 'X ', hx("OFD locks are supported on 64-bit Linux only (this host is $^O/$arch)"), "\n"; exit 1;
}
my ($GETLK, $SETLK, $RD, $WR, $UN) = (36, 37, 0, 1, 2);
sub fl { pack('ssx4qqlx4', $_[0], 0, $_[1], 1, 0) }
sub holders {
  my ($fd, $byte) = @_;
  my @st = stat($fd) or return '-';
  my ($dev, $ino) = @st[0, 1];
  my $maj = (($dev >> 8) & 0xfff) | (($dev >> 32) & ~0xfff);
  my $min = ($dev & 0xff) | (($dev >> 12) & ~0xff);
  my $id = sprintf('%02x:%02x:%d', $maj, $min, $ino);
  my %seen;
  for my $f (glob('/proc/[0-9]*/fdinfo/*')) {
    my ($pid) = $f =~ m{^/proc/(\d+)/} or next;
    next if $pid == $$ || $seen{$pid};
    open(my $in, '<', $f) or next;
    while (my $l = <$in>) {
      next unless $l =~ /^lock:\s+\d+:\s+OFDLCK\s+\S+\s+\S+\s+-?\d+\s+(\S+)\s+(\d+)\s+(\d+|EOF)/;
      next unless $1 eq $id && $2 <= $byte && ($3 eq 'EOF' || $3 >= $byte);
      my $comm = '';
      if (open(my $c, '<', "/proc/$pid/comm")) { $comm = <$c> // ''; chomp $comm; }
      $seen{$pid} = "$pid:" . hx($comm);
      last;
    }
  }
  return %seen ? join(',', values %seen) : '-';
}
sub list { $_[0] eq '-' ? () : split(/,/, $_[0]) }
print "R 1 $$\n";
while (my $line = <STDIN>) {
  chomp $line;
  my ($op, $id, @a) = split(/ /, $line);
  next unless defined $id;
  if ($op eq 'O') {
    my $path = pack('H*', $a[0] // '');
    if (open(my $h, '<', $path)) { $fh{$id} = $h; print "O $id ok\n"; }
    else { print "O $id err ", ($! + 0), "\n"; }
  } elsif ($op eq 'T') {
    my $h = $fh{$id};
    unless ($h) { print "T $id err 9\n"; next; }
    my (@taken, $reply);
    for my $b (list($a[0])) {
      my $buf = fl($RD, $b);
      if (fcntl($h, $SETLK, $buf)) { push @taken, $b; next; }
      $reply = ($! == 11 || $! == 13) ? "busy $b" : 'err ' . ($! + 0);
      last;
    }
    unless ($reply) {
      for my $b (list($a[1])) {
        my $buf = fl($WR, $b);
        unless (fcntl($h, $GETLK, $buf)) { $reply = 'err ' . ($! + 0); last; }
        my ($type) = unpack('s', $buf);
        if ($type != $UN) { $reply = "conflict $b " . holders($h, $b); last; }
      }
    }
    my @drop = $reply ? @taken : list($a[2]);
    for my $b (@drop) { my $buf = fl($UN, $b); fcntl($h, $SETLK, $buf); }
    print "T $id ", ($reply // 'ok'), "\n";
  } elsif ($op eq 'C') {
    close(delete $fh{$id}) if $fh{$id};
    print "C $id ok\n";
  } elsif ($op eq 'S') {
    my $path = pack('H*', $a[0] // '');
    my @st = ($a[1] // '1') eq '0' ? lstat($path) : stat($path);
    unless (@st) { print "S $id ", (($! == 2 || $! == 20) ? 'none' : 'err ' . ($! + 0)), "\n"; next; }
    my $m = $st[2] & 0170000;
    my $k = $m == 0100000 ? 'f' : $m == 0040000 ? 'd' : $m == 0120000 ? 'l' : 'o';
    print "S $id ok $k $st[7] $st[12] $st[0] $st[1]\n";
  } elsif ($op eq 'E') {
    my $path = pack('H*', $a[0] // '');
    my ($off, $len, $max) = (($a[1] // 0) + 0, ($a[2] // 0) + 0, ($a[3] // 1) + 0);
    my $h;
    unless (open($h, '<', $path)) { print "E $id err ", ($! + 0), "\n"; next; }
    my $size = -s $h;
    my $end = $off + $len;
    $end = $size if $end > $size;
    my @out;
    while ($off < $end && @out < $max) {
      my $d = sysseek($h, $off, 3);
      if (!defined $d) {
        push @out, "$off:" . ($end - $off) . ($! == 6 ? ':h' : ':d');
        last;
      }
      $d += 0;
      if ($d > $off) {
        my $n = ($d < $end ? $d : $end) - $off;
        push @out, "$off:$n:h";
        $off += $n;
        next;
      }
      my $hole = sysseek($h, $off, 4);
      my $stop = defined $hole ? $hole + 0 : $end;
      $stop = $end if $stop > $end;
      $stop = $end if $stop <= $off;
      push @out, "$off:" . ($stop - $off) . ':d';
      $off = $stop;
    }
    close($h);
    print "E $id ok ", (@out ? join(',', @out) : '-'), "\n";
  } elsif ($op eq 'H') {
    my $path = pack('H*', $a[0] // '');
    my $max = ($a[1] // 65536) + 0;
    my $h;
    unless (sysopen($h, $path, POSIX::O_RDONLY() | POSIX::O_NONBLOCK() | POSIX::O_NOCTTY())) { print "H $id err ", ($! + 0), "\n"; next; }
    my @st = stat($h);
    if (!@st || ($st[2] & 0170000) != 0100000) { close($h); print "H $id notreg\n"; next; }
    my $size = $st[7];
    my $want = $size < $max ? $size : $max;
    my $buf = '';
    my $fill = sub { while (length($buf) < $_[0]) { my $n = sysread($h, $buf, $_[0] - length($buf), length($buf)); last unless $n; } };
    $fill->($want);
    if (length($buf) >= 24 && substr($buf, 0, 4) eq "QFI\xfb") {
      my $bits = unpack('N', substr($buf, 20, 4));
      if ($bits >= 9 && $bits <= 21) { my $c = 1 << $bits; $c = $size if $c > $size; $fill->($c) if $c > length($buf); }
    }
    close($h);
    my $len = length($buf);
    $buf =~ s/\0+\z//;
    print "H $id ok $size $st[12] $st[0] $st[1] $len ", (length($buf) ? unpack('H*', $buf) : '-'), "\n";
  } elsif ($op eq 'W') {
    my $dir = pack('H*', $a[0] // '');
    my $max = ($a[1] // 4096) + 0;
    my $d;
    unless (opendir($d, $dir)) { print "W $id err ", ($! + 0), "\n"; next; }
    my (@out, $more);
    my $n = 0;
    while (defined(my $e = readdir($d))) {
      next if $e eq '.' || $e eq '..';
      if (++$n > $max) { $more = 1; last; }
      my $h;
      next unless sysopen($h, "$dir/$e", POSIX::O_RDONLY() | POSIX::O_NONBLOCK() | POSIX::O_NOCTTY());
      my @st = stat($h);
      if (!@st || ($st[2] & 0170000) != 0100000) { close($h); next; }
      my $buf = '';
      sysread($h, $buf, 4096);
      my $b = '-';
      if (length($buf) >= 20 && substr($buf, 0, 4) eq "QFI\xfb") {
        my ($hi, $lo) = unpack('NN', substr($buf, 8, 8));
        my $off = $hi * 4294967296 + $lo;
        my $len = unpack('N', substr($buf, 16, 4));
        if ($off > 0 && $len > 0 && $len <= 1023 && $off <= 2097152) {
          my $name = '';
          if ($off + $len <= length($buf)) { $name = substr($buf, $off, $len); }
          elsif (sysseek($h, $off, 0)) { sysread($h, $name, $len); }
          $b = hx($name) if length($name) == $len;
        }
      }
      close($h);
      push @out, hx($e) . ":$st[0]:$st[1]:$b";
    }
    closedir($d);
    print "W $id ok ", ($more ? 1 : 0), ' ', (@out ? join(',', @out) : '-'), "\n";
  } elsif ($op eq 'D') {
    my $path = pack('H*', $a[0] // '');
    if (open(my $h, '<', $path)) { $h->sync; close($h); print "D $id ok\n"; }
    else { print "D $id err ", ($! + 0), "\n"; }
  } elsif ($op eq 'P') {
    $own{$a[0] // ''} = 1;
    print "P $id ok\n";
  } elsif ($op eq 'F') {
    delete $own{$a[0] // ''};
    print "F $id ok\n";
  }
}
# Standard input closed: what we still own was never published.
for my $x (keys %own) {
  my $p = pack('H*', $x);
  next if $p eq '';
  if (-d $p && !-l $p) {
    if (opendir(my $d, $p)) {
      for my $n (readdir($d)) { unlink("$p/$n") unless $n eq '.' || $n eq '..'; }
      closedir($d);
    }
    rmdir($p);
  } else {
    unlink($p);
  }
}
`;

/** The names QEMU prints for permissions (bdrv_perm_names): the ids with spaces. */
const permName = (p: Permission): string => p.replace(/-/g, ' ');

/** What the helper must check for a mode, in QEMU's order (raw_check_lock_bytes). */
function probesFor(mode: LockMode): number[] {
  const spec = LOCK_MODES[mode];
  const uses = PERMISSIONS.flatMap((p, i) => (spec.perm.includes(p) ? [LOCK_SHARED_BASE + i] : []));
  const unshared = PERMISSIONS.flatMap((p, i) => (spec.shared.includes(p) ? [] : [LOCK_PERM_BASE + i]));
  return [...uses, ...unshared];
}

/** QEMU's message for a conflict found probing `byte`. */
function conflictMessage(byte: number): string {
  const shared = byte < LOCK_SHARED_BASE;
  const p = PERMISSIONS[byte - (shared ? LOCK_PERM_BASE : LOCK_SHARED_BASE)];
  const name = p !== undefined ? permName(p) : `byte ${byte}`;
  return shared ? `Failed to get shared "${name}" lock` : `Failed to get "${name}" lock`;
}

/** A process holding a lock byte on the host. */
export interface RemoteLockHolder {
  pid: number;
  /** Its command name (/proc/PID/comm), e.g. "qemu-nbd" or "qemu-system-x86". */
  name: string;
}

/** A QEMU image lock held on a remote host. */
export interface RemoteImageLock {
  readonly path: string;
  readonly mode: LockMode;
  /** Lock bytes held, ascending. */
  readonly bytes: readonly number[];
  /** False once released, or once the helper or the connection is gone (QEMU may then open the image). */
  readonly held: boolean;
  /** Switch modes as QEMU does (take, probe, drop); on LOCKED the old mode stays held. */
  change(mode: LockMode): Promise<void>;
  /** Drop the locks (idempotent). */
  release(): Promise<void>;
}

const ERRNO: Record<number, string> = { 2: 'No such file or directory', 13: 'Permission denied', 20: 'Not a directory', 21: 'Is a directory', 40: 'Too many levels of symbolic links' };

const hex = (s: string): string => Buffer.from(s, 'utf8').toString('hex');
const unhex = (s: string): string => Buffer.from(s, 'hex').toString('utf8');

/** What the helper's stat says about a path. */
export interface HelperStat {
  kind: 'file' | 'directory' | 'symlink' | 'other';
  size: number;
  /** Bytes allocated on the medium (st_blocks * 512). */
  allocated: number;
  /** Device and inode: equal ids are the same file. */
  id: string;
}

/** An extent of a file on the host: data, or a hole reading as zeros. */
export interface HelperExtent { offset: number; length: number; data: boolean }

const KINDS: Record<string, HelperStat['kind']> = { f: 'file', d: 'directory', l: 'symlink', o: 'other' };

/**
 * The helper of one connection: started on first use, stopped once no lock is held and nothing
 * was asked of it for a while (it holds one of the connection's channels).
 */
export class HostHelper {
  private proc?: Promise<RemoteProcess>;
  private buffered = '';
  private readonly waiting = new Map<string, (words: string[]) => void>();
  private nextId = 0;
  private readonly locks = new Set<LockState>();
  /** Temporary paths the helper owns (removes if it ends before they are forgotten). */
  private readonly owned = new Set<string>();
  private linger?: NodeJS.Timeout;
  private lost?: Qcow2Error;

  constructor(private readonly conn: SshConnection, private readonly lingerMs = 5000) {}

  /** The helper of `conn`'s connection (one helper per connection). */
  static of(conn: SshConnection): HostHelper {
    return conn.perConnection('qemu-host-helper', () => new HostHelper(conn));
  }

  private start(): Promise<RemoteProcess> {
    if (this.proc !== undefined) return this.proc;
    this.lost = undefined;
    const p = (async () => {
      const proc = await this.conn.spawn(['perl', '-e', HOST_HELPER]);
      const ch = proc.channel;
      let stderr = '';
      ch.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-2000)));
      const ready = new Promise<void>((resolve, reject) => {
        this.waiting.set('R', (w) =>
          w[0] === 'R' ? resolve() : reject(new Qcow2Error('UNSUPPORTED', `Cannot lock images on ${this.conn.label}: ${unhex(w[1] ?? '')}`)),
        );
        void proc.exited.then(({ status }) => {
          const why =
            status === 127
              ? `Cannot lock images on ${this.conn.label}: perl is not installed there (the image lock helper needs perl-base)`
              : `The image lock helper on ${this.conn.label} stopped (exit ${status ?? 'signal'}${stderr ? `: ${stderr.trim().split('\n').pop()}` : ''})`;
          reject(new Qcow2Error(status === 127 ? 'UNSUPPORTED' : 'CONNECTION', why));
        });
      });
      ch.on('data', (d: Buffer) => this.onData(d));
      void proc.exited.then(() => this.onExit(p));
      await ready;
      return proc;
    })();
    this.proc = p;
    p.catch(() => {
      if (this.proc === p) this.proc = undefined;
    });
    return p;
  }

  private onData(d: Buffer): void {
    this.buffered += d.toString('latin1');
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      const words = line.split(' ');
      const key = words[0] === 'R' || words[0] === 'X' ? 'R' : `${words[0]} ${words[1]}`;
      const w = this.waiting.get(key);
      if (w === undefined) continue;
      this.waiting.delete(key);
      w(words[0] === 'R' || words[0] === 'X' ? words : words.slice(2));
    }
  }

  private onExit(p: Promise<RemoteProcess>): void {
    // A helper stopped while idle (no lock, nothing asked) when a newer one already runs.
    if (this.proc !== p && this.proc !== undefined) return;
    this.lost = new Qcow2Error(
      'CONNECTION',
      `The image lock helper on ${this.conn.label} ended (the connection was closed or lost): its locks are released`,
    );
    this.proc = undefined;
    this.buffered = '';
    for (const l of this.locks) l.held = false;
    this.locks.clear();
    this.owned.clear(); // removed by the helper as it ended
    const pending = [...this.waiting.values()];
    this.waiting.clear();
    for (const w of pending) w(['lost']);
  }

  private async request(line: string, key: string): Promise<string[]> {
    if (this.linger !== undefined) {
      clearTimeout(this.linger);
      this.linger = undefined;
    }
    const proc = await this.start();
    return new Promise<string[]>((resolve, reject) => {
      this.waiting.set(key, (words) => (words[0] === 'lost' ? reject(this.lost) : resolve(words)));
      if (!proc.channel.write(`${line}\n`) && !proc.channel.writable) {
        this.waiting.delete(key);
        reject(this.lost ?? new Qcow2Error('CONNECTION', `The image lock helper on ${this.conn.label} is gone`));
      }
    });
  }

  /** Start the helper now (it is started on first use otherwise); it lingers while unused. */
  async ready(): Promise<void> {
    await this.start();
    this.idle();
  }

  /** A request that is not about a lock: the helper lingers after it while no lock is held. */
  private async ask(op: string, args: string): Promise<string[]> {
    const id = String(++this.nextId);
    try {
      return await this.request(`${op} ${id} ${args}`, `${op} ${id}`);
    } finally {
      this.idle();
    }
  }

  /**
   * Hand a temporary file or folder we just created to the helper: if it ends (connection lost,
   * process killed) before forget(path), it removes it. Never for a name we did not create.
   */
  async own(path: string): Promise<void> {
    this.owned.add(path);
    await this.ask('P', hex(path));
  }

  /** `path` was published or removed: the helper no longer removes it. */
  async forget(path: string): Promise<void> {
    if (!this.owned.delete(path)) return;
    await this.ask('F', hex(path));
  }

  /** Stop the helper after lingerMs once no lock is held and no temporary is owned. */
  private idle(): void {
    if (this.locks.size === 0 && this.owned.size === 0 && this.proc !== undefined && this.linger === undefined) {
      this.linger = setTimeout(() => void this.stop(), this.lingerMs);
      this.linger.unref();
    }
  }

  private errnoError(errno: number, what: string, path: string): Qcow2Error {
    const where = `${this.conn.label}:${path}`;
    return new Qcow2Error(errno === 2 ? 'NOT_FOUND' : 'IO', `Could not ${what} '${where}': ${ERRNO[errno] ?? `error ${errno}`}`, { file: where });
  }

  /** stat(2) (or lstat(2) with follow false) on the host; undefined when nothing is there. */
  async stat(path: string, follow = true): Promise<HelperStat | undefined> {
    const r = await this.ask('S', `${hex(path)} ${follow ? 1 : 0}`);
    if (r[0] === 'none') return undefined;
    if (r[0] !== 'ok') throw this.errnoError(Number(r[1]), 'stat', path);
    return { kind: KINDS[r[1]!] ?? 'other', size: Number(r[2]), allocated: Number(r[3]) * 512, id: `${r[4]}:${r[5]}` };
  }

  /**
   * The data and hole extents of [offset, offset+length) of a file, clipped to its size, as
   * lseek(SEEK_DATA/SEEK_HOLE) finds them on the host: at most `max`, in order from `offset`.
   */
  async extents(path: string, offset: number, length: number, max = 256): Promise<HelperExtent[]> {
    const r = await this.ask('E', `${hex(path)} ${offset} ${length} ${max}`);
    if (r[0] !== 'ok') throw this.errnoError(Number(r[1]), 'open', path);
    if (r[1] === undefined || r[1] === '-') return [];
    return r[1].split(',').map((e) => {
      const [o, l, d] = e.split(':');
      return { offset: Number(o), length: Number(l), data: d === 'd' };
    });
  }

  /**
   * A regular file's stat and first bytes in one request: `max` bytes, or its first cluster when
   * it is a qcow2 image (at most 2 MiB). Opened without waiting (a FIFO never blocks it);
   * anything but a regular file is `notRegular`.
   */
  async head(path: string, max: number): Promise<(HelperStat & { head: Buffer }) | { notRegular: true }> {
    const r = await this.ask('H', `${hex(path)} ${max}`);
    if (r[0] === 'notreg') return { notRegular: true };
    if (r[0] !== 'ok') throw this.errnoError(Number(r[1]), 'open', path);
    const head = Buffer.alloc(Number(r[5]));
    if (r[6] !== undefined && r[6] !== '-') head.write(r[6], 'hex');
    return { kind: 'file', size: Number(r[1]), allocated: Number(r[2]) * 512, id: `${r[3]}:${r[4]}`, head };
  }

  /**
   * The regular files of folder `dir` (at most `max` entries read), each with its identity and,
   * for a qcow2 file, the backing name its header stores: one request for a whole folder.
   */
  async scan(dir: string, max: number): Promise<{ files: Array<{ name: string; id: string; backing?: string }>; truncated: boolean }> {
    const r = await this.ask('W', `${hex(dir)} ${max}`);
    if (r[0] !== 'ok') throw this.errnoError(Number(r[1]), 'read folder', dir);
    const files = r[2] === undefined || r[2] === '-' ? [] : r[2].split(',').map((e) => {
      const [name, dev, ino, backing] = e.split(':');
      return { name: unhex(name ?? ''), id: `${dev}:${ino}`, ...(backing !== undefined && backing !== '-' ? { backing: unhex(backing) } : {}) };
    });
    return { files, truncated: r[1] === '1' };
  }

  /** fsync(2) a folder on the host, making the names linked into it durable. */
  async fsyncDir(path: string): Promise<void> {
    const r = await this.ask('D', hex(path));
    if (r[0] !== 'ok') throw this.errnoError(Number(r[1]), 'sync folder', path);
  }

  private holdersOf(field: string | undefined): RemoteLockHolder[] {
    if (field === undefined || field === '-') return [];
    return field.split(',').map((h) => {
      const [pid, name] = h.split(':');
      return { pid: Number(pid), name: unhex(name ?? '') };
    });
  }

  /** Take, probe and drop bytes for `state` to move from `from` to `to`; throws LOCKED with QEMU's words. */
  private async transition(state: LockState, from: readonly number[], to: LockMode): Promise<number[]> {
    const want = lockBytes(to);
    const take = want.filter((b) => !from.includes(b));
    const drop = from.filter((b) => !want.includes(b));
    const list = (l: number[]) => (l.length === 0 ? '-' : l.join(','));
    const r = await this.request(`T ${state.id} ${list(take)} ${list(probesFor(to))} ${list(drop)}`, `T ${state.id}`);
    if (r[0] === 'ok') return want;
    const where = `${this.conn.label}:${state.path}`;
    if (r[0] === 'conflict' || r[0] === 'busy') {
      const byte = Number(r[1]);
      const holders = this.holdersOf(r[2]);
      const by = holders.length > 0 ? `\nHeld on ${this.conn.label} by ${holders.map((h) => `${h.name} (pid ${h.pid})`).join(', ')}` : '';
      const what = r[0] === 'busy' ? `Failed to lock byte ${byte}` : conflictMessage(byte);
      throw new Qcow2Error('LOCKED', `${what}\nIs another process using the image [${state.path}]?${by}`, { file: where });
    }
    throw new Qcow2Error('IO', `Could not lock '${where}': ${ERRNO[Number(r[1])] ?? `error ${r[1]}`}`, { file: where });
  }

  /**
   * Take QEMU's lock for `mode` on `path` on the host, as qemu-img 7.2 does for the same operation
   * ('write' like amend/resize, 'read' like check). Throws LOCKED (QEMU's wording, plus the holders
   * it can name), NOT_FOUND, or CONNECTION; on any failure nothing stays held. Keep a lease on
   * the connection while the lock is held: a pooled connection nobody leases is closed when idle,
   * and its locks go with it.
   */
  async lock(path: string, mode: LockMode): Promise<RemoteImageLock> {
    if (LOCK_MODES[mode] === undefined) throw new Qcow2Error('INVALID_OPTION', `unknown lock mode '${String(mode)}'`);
    if (this.linger !== undefined) {
      clearTimeout(this.linger);
      this.linger = undefined;
    }
    const state = new LockState(this, String(++this.nextId), path);
    this.locks.add(state);
    try {
      const o = await this.request(`O ${state.id} ${hex(path)}`, `O ${state.id}`);
      if (o[0] !== 'ok') {
        const where = `${this.conn.label}:${path}`;
        const errno = Number(o[1]);
        throw new Qcow2Error(errno === 2 ? 'NOT_FOUND' : 'IO', `Could not open '${where}': ${ERRNO[errno] ?? `error ${errno}`}`, { file: where });
      }
      state.bytes = await this.transition(state, [], mode);
      state.mode = mode;
      state.held = true;
      return state;
    } catch (e) {
      await this.close(state).catch(() => undefined);
      throw e;
    }
  }

  /** @internal */
  async change(state: LockState, mode: LockMode): Promise<void> {
    if (!state.held) throw this.lost ?? new Qcow2Error('INVALID_OPTION', `the image lock on ${state.path} was released`);
    state.bytes = await this.transition(state, state.bytes, mode);
    state.mode = mode;
  }

  /** @internal */
  async close(state: LockState): Promise<void> {
    const wasTracked = this.locks.delete(state);
    state.held = false;
    state.bytes = [];
    try {
      if (wasTracked && this.proc !== undefined) await this.request(`C ${state.id}`, `C ${state.id}`);
    } finally {
      this.idle();
    }
  }

  /** End the helper (releasing whatever it holds). */
  async stop(): Promise<void> {
    if (this.linger !== undefined) clearTimeout(this.linger);
    this.linger = undefined;
    const p = this.proc;
    if (p === undefined) return;
    const idle = this.locks.size === 0 && this.owned.size === 0 && this.waiting.size === 0;
    // An idle helper is forgotten at once: a request from now on starts a new one.
    if (idle) this.proc = undefined;
    const proc = await p.catch(() => undefined);
    if (proc === undefined) return;
    proc.channel.end();
    await proc.exited;
  }
}

class LockState implements RemoteImageLock {
  mode: LockMode = 'read';
  bytes: number[] = [];
  held = false;
  constructor(private readonly locker: HostHelper, readonly id: string, readonly path: string) {}
  change(mode: LockMode): Promise<void> {
    return this.locker.change(this, mode);
  }
  release(): Promise<void> {
    if (!this.held) return Promise.resolve();
    return this.locker.close(this);
  }
}

/** Lock `path` on the host of `conn` (see HostHelper.lock). */
export function lockRemoteImage(conn: SshConnection, path: string, mode: LockMode): Promise<RemoteImageLock> {
  return HostHelper.of(conn).lock(path, mode);
}
