// The import's preflight (guest/sources/preflight.ts): before anything is written, every mapping
// of every qcow2 layer of the source must lie inside its file, so that a truncated source fails
// whole instead of halfway. Sources qemu-img and qemu-io made, then cut short: a compressed
// cluster, and a data cluster whose entry has no COPIED flag (a snapshot shares it), so that
// the entry's upper 32 bits are zero and only its lower word holds the offset (entries of all
// zero bits are skipped unread).

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { importImageAsync } from '../../../provider/engines/native/ops';
import { qemuImg, qemuIo, runQemuImg, skipWithoutQemuTools, tempDir } from './harness';

describe.skipIf(skipWithoutQemuTools('import preflight'))('import preflight of a truncated qcow2 source', () => {
  const root = tempDir('preflight');
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
  const at = (f: string) => path.join(root, f);

  /** The offset of guest offset `guest`'s data in `file` (qemu-img map). */
  function hostOf(file: string, guest: number): number {
    const map = JSON.parse(qemuImg(['map', '--output=json', file])) as Array<{ start: number; length: number; offset?: number }>;
    const e = map.find((m) => m.start <= guest && guest < m.start + m.length && m.offset !== undefined)!;
    return e.offset! + guest - e.start;
  }

  async function refused(src: string, dst: string, message: RegExp): Promise<void> {
    await expect(importImageAsync(at(dst), {}, { path: at(src), format: 'qcow2' })).rejects.toThrow(message);
    expect(fs.existsSync(at(dst))).toBe(false);
    expect(fs.readdirSync(root).filter((f) => f.startsWith('.'))).toEqual([]);
  }

  it('refuses_a_compressed_cluster_past_the_end_and_imports_the_whole_file', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', at('c.qcow2'), '64M']);
    qemuIo(['-f', 'qcow2', '-c', 'write -P 8 40M 64k', '-c', 'write -c -P 7 0 64k', at('c.qcow2')]);
    await importImageAsync(at('c-ok.qcow2'), {}, { path: at('c.qcow2'), format: 'qcow2' });
    expect(runQemuImg(['compare', at('c.qcow2'), at('c-ok.qcow2')]).stdout).toContain('identical');
    // The compressed bytes are the file's last, at the start of its last cluster: cut there.
    const cut = Math.floor((fs.statSync(at('c.qcow2')).size - 1) / 65536) * 65536;
    fs.copyFileSync(at('c.qcow2'), at('c-cut.qcow2'));
    fs.truncateSync(at('c-cut.qcow2'), cut);
    await refused('c-cut.qcow2', 'c-out.qcow2', new RegExp(`truncated or corrupt: compressed cluster at 0x${cut.toString(16)} lies outside the file`));
  });

  it('refuses_a_shared_data_cluster_past_the_end_whose_entry_has_only_its_lower_word', async () => {
    qemuImg(['create', '-q', '-f', 'qcow2', at('s.qcow2'), '64M']);
    qemuIo(['-f', 'qcow2', '-c', 'write -P 1 0 64k', '-c', 'write -P 2 32M 1M', at('s.qcow2')]);
    qemuImg(['snapshot', '-c', 'snap', at('s.qcow2')]);
    const data = hostOf(at('s.qcow2'), 32 << 20);
    expect(data).toBeLessThan(2 ** 32); // the offset is all in the lower word; COPIED (bit 63) is clear
    fs.copyFileSync(at('s.qcow2'), at('s-cut.qcow2'));
    fs.truncateSync(at('s-cut.qcow2'), data);
    await refused('s-cut.qcow2', 's-out.qcow2', new RegExp(`truncated or corrupt: data cluster at 0x${data.toString(16)} lies outside the file \\(${data} bytes\\)`));
  });
});
