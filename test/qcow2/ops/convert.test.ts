// Import/convert conformance against qemu-img convert: the guest view is identical
// (qemu-img compare), the image is clean (qemu-img check), and it allocates no more clusters
// than qemu-img convert does for the same input and options. Bad sources fail before the
// destination exists and leave nothing behind. `map` is compared with qemu-img map.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importImage, mapImage } from '../../../provider/engines/native/ops';
import { mapJsonText } from '../../../provider/cli/render/map';
import { prng, qemuImg, qemuIo, qemuMap, runQemuImg, skipWithoutQemuTools, tempDir } from '../guest/harness';

const CLI = path.join(__dirname, '..', '..', '..', 'dist', 'provider', 'cli', 'qcow2.js');

interface Source { name: string; file: string; format: 'raw' | 'qcow2' }

function checkJson(file: string): Record<string, number> {
  const r = runQemuImg(['check', '--output=json', file]);
  expect(r.status, r.stdout + r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Record<string, number>;
}

describe.skipIf(skipWithoutQemuTools('data convert'))('convert / import', () => {
  const root = tempDir('convert');
  const sources: Source[] = [];
  const figures: string[] = [];
  afterAll(() => {
    console.log(`[data convert] allocated clusters, ours vs qemu-img convert:\n${figures.join('\n')}`);
    fs.rmSync(root, { recursive: true, force: true });
  });

  beforeAll(() => {
    const rand = prng(42);
    const at = (n: string) => path.join(root, n);
    // 1. A sparse raw file: random clusters, explicit zero blocks, holes, an unaligned tail.
    {
      const f = at('sparse.raw');
      const fd = fs.openSync(f, 'w');
      for (let i = 0; i < 200; i++) {
        const off = Math.floor(rand() * 2048) * 4096;
        const b = rand() < 0.3 ? Buffer.alloc(4096) : Buffer.from(Array.from({ length: 4096 }, () => Math.floor(rand() * 256)));
        fs.writeSync(fd, b, 0, b.length, off);
      }
      fs.ftruncateSync(fd, (8 << 20) + 1000);
      fs.closeSync(fd);
      sources.push({ name: 'sparse-raw', file: f, format: 'raw' });
    }
    // 2. qcow2 with data, zero, discarded and zlib-compressed clusters.
    {
      const f = at('mixed.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', f, '8M']);
      qemuIo(['-f', 'qcow2', '-c', 'write -c -P 0x61 0 64k', '-c', 'write -c -P 0x62 1M 128k', '-c', 'write -P 0x63 64k 100k',
        '-c', 'write -z 2M 256k', '-c', 'write -P 0x64 3M 1M', '-c', 'discard 3M 128k', '-c', 'write -P 0 5M 64k', f]);
      sources.push({ name: 'mixed-qcow2', file: f, format: 'qcow2' });
    }
    // 3. zstd-compressed clusters.
    {
      const f = at('zstd.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compression_type=zstd', f, '4M']);
      const data = Buffer.from(Array.from({ length: 65536 }, (_, i) => (i * 7) % 251));
      fs.writeFileSync(at('pattern.bin'), data);
      qemuIo(['-f', 'qcow2', '-c', 'write -c -P 0x41 0 64k', '-c', 'write -c -s ' + at('pattern.bin') + ' 128k 64k', '-c', 'write -P 0x42 1M 64k', f]);
      sources.push({ name: 'zstd-qcow2', file: f, format: 'qcow2' });
    }
    // 4. A chain: qcow2 over qcow2 over raw (relative backing names).
    {
      const base = at('chain-base.raw');
      fs.writeFileSync(base, Buffer.from(Array.from({ length: 2 << 20 }, (_, i) => (i >> 12) & 0xff)));
      qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'chain-base.raw', '-F', 'raw', at('chain-mid.qcow2'), '6M']);
      qemuIo(['-f', 'qcow2', '-c', 'write -P 0x71 512k 256k', '-c', 'write -z 1M 64k', '-c', 'write -P 0x72 4M 64k', at('chain-mid.qcow2')]);
      qemuImg(['create', '-q', '-f', 'qcow2', '-b', 'chain-mid.qcow2', '-F', 'qcow2', at('chain-top.qcow2'), '6M']);
      qemuIo(['-f', 'qcow2', '-c', 'write -P 0x73 0 4k', '-c', 'discard 4M 64k', '-c', 'write -P 0x74 5M 8k', at('chain-top.qcow2')]);
      sources.push({ name: 'chain-qcow2', file: at('chain-top.qcow2'), format: 'qcow2' });
    }
    // 5. Extended L2 with subcluster writes over a backing file.
    {
      const base = at('ext-base.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', base, '4M']);
      qemuIo(['-f', 'qcow2', '-c', 'write -P 0x11 0 4M', base]);
      const f = at('ext.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on,cluster_size=65536', '-b', 'ext-base.qcow2', '-F', 'qcow2', f, '4M']);
      qemuIo(['-f', 'qcow2', '-c', 'write -P 0x22 4k 4k', '-c', 'write -z 64k 8k', '-c', 'write -P 0x23 200k 2k', '-c', 'discard 1M 64k', f]);
      sources.push({ name: 'extended-l2', file: f, format: 'qcow2' });
    }
    // 6. data-file-raw image.
    {
      const f = at('dfr.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', '-o', `data_file=${at('dfr.raw')},data_file_raw=on`, f, '4M']);
      qemuIo(['-f', 'qcow2', '-c', 'write -P 0x31 0 300k', '-c', 'write -z 1M 128k', '-c', 'discard 2M 64k', f]);
      sources.push({ name: 'data-file-raw', file: f, format: 'qcow2' });
    }
  });

  const targets: Array<[string, string]> = [
    ['default', ''],
    ['4k clusters', 'cluster_size=4096'],
    ['extended_l2', 'extended_l2=on'],
    ['compat 0.10', 'compat=0.10'],
    ['refcount_bits=1', 'refcount_bits=1,cluster_size=512'],
    ['data file raw', 'data_file=DATA,data_file_raw=on'],
    ['data file', 'data_file=DATA'],
  ];

  for (const srcIndex of [0, 1, 2, 3, 4, 5]) {
    for (const [tname, topts] of targets) {
      it(`source ${srcIndex} into ${tname}`, () => {
        const src = sources[srcIndex]!;
        const dir = fs.mkdtempSync(path.join(root, 'case-'));
        const ours = path.join(dir, 'ours.qcow2');
        const theirs = path.join(dir, 'qemu.qcow2');
        const o = (name: string) => topts.replace('DATA', path.join(dir, `${name}.raw`));
        const args = ['convert', '-f', src.format, '-O', 'qcow2', ...(topts ? ['-o', o('ours')] : []), src.file, ours];
        const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
        expect(r.status, r.stderr).toBe(0);
        qemuImg(['convert', '-f', src.format, '-O', 'qcow2', ...(topts ? ['-o', o('qemu')] : []), src.file, theirs]);
        const cmp = runQemuImg(['compare', '-f', src.format, '-F', 'qcow2', src.file, ours]);
        expect(cmp.stdout + cmp.stderr).toContain('Images are identical.');
        const a = checkJson(ours), b = checkJson(theirs);
        const ac = a['allocated-clusters'] ?? 0, bc = b['allocated-clusters'] ?? 0;
        expect(ac, `${src.name} -> ${tname}`).toBeLessThanOrEqual(bc);
        if (topts.includes('data_file_raw')) {
          const raw = runQemuImg(['compare', '-f', 'raw', '-F', 'qcow2', path.join(dir, 'ours.raw'), ours]);
          expect(raw.stdout + raw.stderr).toContain('Images are identical.');
        }
        figures.push(`| ${src.name} | ${tname} | ${ac} | ${bc} | ${fs.statSync(ours).size} | ${fs.statSync(theirs).size} |`);
        // Our map of what we wrote equals qemu-img's, text for text.
        expect(mapJsonText(mapImage(ours))).toBe(qemuImg(['map', '--output=json', ours]));
      });
    }
  }

  it('map_matches_qemu_on_sources', () => {
    for (const s of sources) {
      if (s.format !== 'qcow2') continue;
      expect(mapImage(s.file).map(({ filename: _f, ...e }) => e), s.name).toEqual(qemuMap(s.file));
      const cli = spawnSync(process.execPath, [CLI, 'map', '--output=json', s.file], { encoding: 'utf8' });
      expect(cli.stdout, s.name).toBe(qemuImg(['map', '--output=json', s.file]));
      if (s.name !== 'mixed-qcow2' && s.name !== 'zstd-qcow2') {
        const human = spawnSync(process.execPath, [CLI, 'map', s.file], { encoding: 'utf8' });
        expect(human.stdout, s.name).toBe(qemuImg(['map', s.file]));
      } else {
        const human = spawnSync(process.execPath, [CLI, 'map', s.file], { encoding: 'utf8' });
        expect(human.status).toBe(1);
        expect(human.stderr).toContain('File contains external, encrypted or compressed clusters.');
      }
    }
  });

  it('progress_callback_reports_to_total', () => {
    const dir = fs.mkdtempSync(path.join(root, 'progress-'));
    const seen: Array<[number, number]> = [];
    importImage(path.join(dir, 'p.qcow2'), {}, { path: sources[0]!.file, format: 'raw' }, { progress: (d, t) => seen.push([d, t]) });
    expect(seen.length).toBeGreaterThan(0);
    expect(seen[seen.length - 1]![0]).toBe(seen[seen.length - 1]![1]);
    for (let i = 1; i < seen.length; i++) expect(seen[i]![0]).toBeGreaterThanOrEqual(seen[i - 1]![0]);
  });

  describe('bad sources fail before the destination exists', () => {
    const cases: Array<[string, (dir: string) => { file: string; format?: string }, RegExp]> = [
      ['missing_source', (d) => ({ file: path.join(d, 'nope.raw'), format: 'raw' }), /No such file or directory/],
      ['truncated_qcow2', (d) => {
        const f = path.join(d, 't.qcow2');
        fs.copyFileSync(sources[1]!.file, f);
        fs.truncateSync(f, fs.statSync(f).size - 65536 * 3);
        return { file: f, format: 'qcow2' };
      }, /truncated/],
      ['hostile_header_version', (d) => {
        const f = path.join(d, 'h.qcow2');
        const b = fs.readFileSync(sources[1]!.file);
        b.writeUInt32BE(9, 4);
        fs.writeFileSync(f, b);
        return { file: f, format: 'qcow2' };
      }, /Unsupported qcow2 version 9/],
      ['hostile_header_l1_offset', (d) => {
        const f = path.join(d, 'l.qcow2');
        const b = fs.readFileSync(sources[1]!.file);
        b.writeBigUInt64BE(0x123n, 40);
        fs.writeFileSync(f, b);
        return { file: f, format: 'qcow2' };
      }, /Active L1 table offset invalid/],
      ['missing_backing_file', (d) => {
        const f = path.join(d, 'o.qcow2');
        qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', f, '1M']);
        return { file: f, format: 'qcow2' };
      }, /Could not open backing file/],
    ];
    for (const [name, make, msg] of cases) {
      it(name, () => {
        const dir = fs.mkdtempSync(path.join(root, 'bad-'));
        const s = make(dir);
        const before = fs.readdirSync(dir).sort();
        const dst = path.join(dir, 'dst.qcow2');
        const data = path.join(dir, 'dst.raw');
        expect(() => importImage(dst, { dataFile: data, dataFileRaw: true }, { path: s.file, ...(s.format ? { format: s.format } : {}) })).toThrow(msg);
        expect(fs.existsSync(dst)).toBe(false);
        expect(fs.existsSync(data)).toBe(false);
        expect(fs.readdirSync(dir).sort()).toEqual(before);
      });
    }

    it('existing_destination_or_data_file_is_never_overwritten', () => {
      const dir = fs.mkdtempSync(path.join(root, 'exists-'));
      const dst = path.join(dir, 'dst.qcow2');
      fs.writeFileSync(dst, 'keep');
      expect(() => importImage(dst, {}, { path: sources[0]!.file, format: 'raw' })).toThrow(/already exists/);
      expect(fs.readFileSync(dst, 'utf8')).toBe('keep');
      const data = path.join(dir, 'data.raw');
      fs.writeFileSync(data, 'keep too');
      expect(() => importImage(path.join(dir, 'new.qcow2'), { dataFile: data, dataFileRaw: true }, { path: sources[0]!.file, format: 'raw' })).toThrow(/already exists/);
      expect(fs.readFileSync(data, 'utf8')).toBe('keep too');
      expect(fs.existsSync(path.join(dir, 'new.qcow2'))).toBe(false);
      expect(fs.readdirSync(dir).sort()).toEqual(['data.raw', 'dst.qcow2']);
    });
  });
});
