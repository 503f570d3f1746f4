// Commands over SSH exec: hostile names reach the remote program as one unchanged argument each
// (checked with printf on the far side), exit status and stderr come back, timeouts and aborts
// stop the remote program. The quoter itself is checked against a local POSIX shell too.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../provider/model/errors';
import { shellCommand, shellQuote, type SshConnection } from '../../provider/transport/ssh';
import { skipWithoutSshd } from '../helpers/sshd';
import { useSshd } from './support';

const skip = skipWithoutSshd('ssh-exec');

/** Names that break naive quoting: whitespace, quotes, expansions, separators, options. */
export const HOSTILE_NAMES = [
  'plain.qcow2',
  'with space.qcow2',
  '  leading and trailing  ',
  "it's.qcow2",
  "''",
  "'",
  'say "hi".qcow2',
  'line1\nline2.qcow2',
  'tab\there',
  '$(touch /tmp/qcow2-quoting-pwned)',
  '`touch /tmp/qcow2-quoting-pwned`',
  '${HOME}',
  '$HOME',
  'a,b,c.qcow2',
  'json:{"driver":"qcow2","file":{"driver":"file","filename":"x"}}',
  '-rf',
  '--help',
  '-',
  '',
  '*',
  '?',
  '[a-z]',
  '~',
  '~root',
  '!bang',
  '#hash',
  ';ls',
  'a|b&c<d>e',
  '\\back\\slash',
  'ünïcødé 🎉.qcow2',
  '%s %d %%',
  '=equals',
  'x\r\ny',
];

/** The argv the remote program received, split from printf '%s\0' output. */
function receivedArgs(stdout: Buffer): string[] {
  const parts = stdout.toString('utf8').split('\0');
  parts.pop(); // after the last terminator
  return parts;
}

describe('shellQuote (POSIX single quotes)', () => {
  it('leaves safe words alone and quotes everything else', () => {
    expect(shellQuote('qemu-img')).toBe('qemu-img');
    expect(shellQuote('/var/lib/images/a.qcow2')).toBe('/var/lib/images/a.qcow2');
    expect(shellQuote('')).toBe("''");
    expect(shellQuote("it's")).toBe(`'it'\\''s'`);
    expect(shellQuote('-rf')).toBe("'-rf'");
    expect(shellQuote('$(x)')).toBe("'$(x)'");
  });

  it('refuses a NUL, which no argv can carry', () => {
    expect(() => shellQuote('a\0b')).toThrow(/NUL/);
    expect(() => shellCommand([])).toThrow(/no command/);
  });

  it('round-trips any string through a local /bin/sh', () => {
    const printf = (args: string[]) => {
      const r = spawnSync('/bin/sh', ['-c', shellCommand(['printf', '%s\\0', ...args])], { encoding: 'buffer' });
      expect(r.status).toBe(0);
      return receivedArgs(r.stdout);
    };
    expect(printf(HOSTILE_NAMES)).toEqual(HOSTILE_NAMES);
    fc.assert(
      fc.property(fc.array(fc.string({ unit: 'binary', maxLength: 40 }).filter((s) => !s.includes('\0')), { minLength: 1, maxLength: 20 }), (args) => {
        expect(printf(args)).toEqual(args);
      }),
      { numRuns: 60 },
    );
  });
});

describe.skipIf(skip)('exec on a real sshd', () => {
  const suite = useSshd();
  let conn: SshConnection;

  beforeAll(() => {
    ({ conn } = suite);
  });

  it('delivers hostile names to the remote program unchanged', async () => {
    fs.rmSync('/tmp/qcow2-quoting-pwned', { force: true });
    const r = await conn.exec(['printf', '%s\\0', ...HOSTILE_NAMES]);
    expect(r.status).toBe(0);
    expect(receivedArgs(r.stdout)).toEqual(HOSTILE_NAMES);
    expect(fs.existsSync('/tmp/qcow2-quoting-pwned')).toBe(false);
    // A name alone, where the program parses options.
    const one = await conn.exec(['printf', '%s\\0', '-rf']);
    expect(receivedArgs(one.stdout)).toEqual(['-rf']);
  });

  it('returns the exit status and stderr; stdin reaches the program', async () => {
    const r = await conn.exec(['sh', '-c', 'cat; echo "to stderr: $1" >&2; exit 3', 'sh', "it's $(here)"], { stdin: 'from stdin' });
    expect(r.status).toBe(3);
    expect(r.signal).toBeNull();
    expect(r.stdout.toString()).toBe('from stdin');
    expect(r.stderr).toBe("to stderr: it's $(here)\n");
    const missing = await conn.exec(['qcow2-no-such-program']);
    expect(missing.status).toBe(127);
    expect(missing.stderr).toMatch(/not found/);
  });

  it('stops a program that outlives its timeout, and one whose caller aborts', async () => {
    const tag = `qcow2-exec-${process.pid}-${Date.now()}`;
    /** pids of `perl -e 'sleep 30' MARKER` on the host (this machine). */
    const running = (marker: string) =>
      spawnSync('pgrep', ['-f', `^perl -e sleep 30 ${marker}$`], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map(Number);
    const waitFor = async (cond: () => boolean) => {
      for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 20));
      return cond();
    };
    const timedOut = await conn.exec(['perl', '-e', 'sleep 30', `${tag}-t`], { timeoutMs: 300 }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(Qcow2Error.isInstance(timedOut)).toBe(true);
    expect((timedOut as Qcow2Error).message).toMatch(/'perl' on .* did not finish within 300 ms; it was stopped/);
    expect(await waitFor(() => running(`${tag}-t`).length === 0)).toBe(true);

    const ac = new AbortController();
    const kept = conn.exec(['perl', '-e', 'sleep 30', `${tag}-k`]);
    const aborted = conn.exec(['perl', '-e', 'sleep 30', `${tag}-a`], { signal: ac.signal });
    expect(await waitFor(() => running(`${tag}-k`).length === 1 && running(`${tag}-a`).length === 1)).toBe(true);
    ac.abort();
    await expect(aborted).rejects.toThrow(/was cancelled/);
    // The aborted program is gone from the host; the other one still runs until it is signalled.
    expect(await waitFor(() => running(`${tag}-a`).length === 0)).toBe(true);
    const [pid] = running(`${tag}-k`);
    expect(pid).toBeGreaterThan(0);
    process.kill(pid!, 'SIGTERM');
    const r = await kept;
    expect(r.status).toBeNull();
    expect(r.signal).toBe('SIGTERM');
  });

  it('stops a program whose caller aborts before its pid has been read', async () => {
    // sshd refuses signal requests in root sessions, so the process-group kill is what stops the
    // program. An abort that comes as soon as the program runs often lands before its pid line
    // has been read; the kill must wait for the pid rather than skip it. Several rounds, since
    // where the abort lands relative to that line varies.
    const tag = `qcow2-early-${process.pid}-${Date.now()}`;
    const running = (marker: string) =>
      spawnSync('pgrep', ['-f', `^perl -e sleep 30 ${marker}$`], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
    for (let round = 0; round < 6; round++) {
      const marker = `${tag}-${round}`;
      const ac = new AbortController();
      const run = conn.exec(['perl', '-e', 'sleep 30', marker], { signal: ac.signal });
      for (let i = 0; i < 500 && running(marker).length === 0; i++) await new Promise((r) => setTimeout(r, 5));
      ac.abort();
      await expect(run).rejects.toThrow(/was cancelled/);
      let left = running(marker);
      for (let i = 0; i < 250 && left.length > 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
        left = running(marker);
      }
      expect(left, `round ${round}`).toEqual([]);
    }
  });

  it('refuses runaway output', async () => {
    await expect(conn.exec(['head', '-c', '100000', '/dev/zero'], { maxStdoutBytes: 1000 })).rejects.toThrow(/wrote more than 1000 bytes/);
  });
});
