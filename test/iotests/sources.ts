// QEMU's qemu-iotests, taken from Debian's source package of the installed qemu-utils, so the
// tests match the qemu-img they are measured against. Fetched once into a cache outside the repo.
//
// The deb-src entries are derived from the machine's own apt sources (every `deb` entry becomes a
// `deb-src` entry with the same options and keyring) and used through a private apt state
// (Dir::Etc::SourceList, Dir::State::Lists, Dir::Cache under a temporary folder): the machine's apt
// configuration and lists are never changed. apt checks the signed index and the file hashes;
// dpkg-source applies Debian's patches (its stable-branch updates touch the iotests).

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

/** The extracted tests: `dir` holds tests/qemu-iotests and python/ of the matching QEMU source. */
export interface IotestsSource {
  /** Folder with `tests/qemu-iotests/check` and `python/`. */
  dir: string;
  /** Debian source package and version, e.g. `qemu 1:7.2+dfsg-7+deb12u18`. */
  label: string;
}

/** The tests could not be had (no network, no apt, version gone from the mirror): a skip outside CI. */
export class SourceUnavailable extends Error {
  readonly brand = 'SourceUnavailable';
  static isInstance(e: unknown): e is SourceUnavailable {
    return typeof e === 'object' && e !== null && (e as { brand?: unknown }).brand === 'SourceUnavailable';
  }
}

/** Where extracted tests are kept: $IOTESTS_CACHE, else $XDG_CACHE_HOME or ~/.cache, /pulumi-qcow2/iotests. */
export function cacheRoot(): string {
  if (process.env.IOTESTS_CACHE) return path.resolve(process.env.IOTESTS_CACHE);
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'pulumi-qcow2', 'iotests');
}

function run(cmd: string, args: string[], opts: { cwd?: string } = {}): { ok: boolean; out: string; err: string } {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' }, maxBuffer: 64 << 20 });
  if (r.error !== undefined) return { ok: false, out: '', err: `${cmd}: ${(r.error as NodeJS.ErrnoException).code ?? r.error.message}` };
  return { ok: r.status === 0, out: r.stdout, err: r.stderr };
}

function lastLines(text: string, n = 6): string {
  return text.trim().split('\n').slice(-n).join('\n');
}

/** Source package and version of the installed qemu-utils (the binNMU suffix of the binary dropped). */
export function installedQemuSource(): { pkg: string; version: string } {
  const r = run('dpkg-query', ['-W', '-f', '${source:Package}\t${source:Version}', 'qemu-utils']);
  if (!r.ok || !r.out.includes('\t')) {
    throw new SourceUnavailable('qemu-utils is not installed as a Debian package (dpkg-query found no qemu-utils): ' +
      'install it with apt-get install qemu-utils, or point IOTESTS_QEMU_SOURCE at an extracted QEMU source tree');
  }
  const [pkg, version] = r.out.trim().split('\t');
  return { pkg, version };
}

/** One-line apt sources: every `deb` line becomes `deb-src` (options kept); others are dropped. */
export function debSrcFromList(text: string): string {
  return text.split('\n')
    .map((l) => l.trim())
    .filter((l) => /^deb(-src)?\s/.test(l))
    .map((l) => l.replace(/^deb\s/, 'deb-src '))
    .join('\n') + '\n';
}

/** deb822 apt sources: stanzas of type deb become deb-src only; all other fields (Signed-By, Enabled...) kept. */
export function debSrcFromDeb822(text: string): string {
  return text.split('\n')
    .map((l) => (/^Types:/i.test(l) && /(^|\s)deb(\s|$)/.test(l.slice(6)) ? 'Types: deb-src' : l))
    .join('\n');
}

/** The machine's source list file and parts folder, as apt itself is configured to read them. */
function aptSourceLocations(): { list: string; parts: string } {
  const r = run('apt-config', ['shell', 'LIST', 'Dir::Etc::SourceList/f', 'PARTS', 'Dir::Etc::SourceParts/d']);
  if (!r.ok) throw new SourceUnavailable(`apt-config is not available (${lastLines(r.err, 1)}): the tests are fetched with apt-get from Debian's source packages`);
  const value = (name: string) => /'([^']*)'/.exec(r.out.split('\n').find((l) => l.startsWith(`${name}=`)) ?? '')?.[1] ?? '';
  return { list: value('LIST'), parts: value('PARTS') };
}

/** Write deb-src variants of the machine's apt sources into `dir`; returns how many files were derived. */
export function writeDerivedSources(dir: string): number {
  const { list, parts } = aptSourceLocations();
  fs.mkdirSync(path.join(dir, 'sources.list.d'), { recursive: true });
  let n = 0;
  fs.writeFileSync(path.join(dir, 'sources.list'), fs.existsSync(list) ? debSrcFromList(fs.readFileSync(list, 'utf8')) : '');
  if (fs.existsSync(list)) n++;
  for (const name of fs.existsSync(parts) ? fs.readdirSync(parts).sort() : []) {
    const text = fs.readFileSync(path.join(parts, name), 'utf8');
    if (name.endsWith('.list')) fs.writeFileSync(path.join(dir, 'sources.list.d', name), debSrcFromList(text));
    else if (name.endsWith('.sources')) fs.writeFileSync(path.join(dir, 'sources.list.d', name), debSrcFromDeb822(text));
    else continue; // apt ignores other names too (e.g. *.disabled)
    n++;
  }
  return n;
}

function aptOptions(state: string): string[] {
  const o = [
    `Dir::Etc::SourceList=${path.join(state, 'sources.list')}`,
    `Dir::Etc::SourceParts=${path.join(state, 'sources.list.d')}`,
    `Dir::State::Lists=${path.join(state, 'lists')}`,
    `Dir::Cache=${path.join(state, 'cache')}`,
    'Acquire::Languages=none',
  ];
  // apt downloads as _apt, which cannot write into a private 0700 folder; as root it may download itself.
  if (process.getuid?.() === 0) o.push('APT::Sandbox::User=root');
  return o.flatMap((x) => ['-o', x]);
}

/** Download and extract the source package into `work`; returns the extracted tree. */
function fetchWithApt(pkg: string, version: string, work: string, log: (s: string) => void): string {
  const state = path.join(work, 'apt');
  for (const d of ['lists/partial', 'cache/archives/partial']) fs.mkdirSync(path.join(state, d), { recursive: true });
  const derived = writeDerivedSources(state);
  if (derived === 0) throw new SourceUnavailable('no apt sources are configured on this machine, so no deb-src entry can be derived');
  const opts = aptOptions(state);
  log(`iotests: fetching ${pkg} ${version} source (deb-src derived from this machine's apt sources)`);
  // An entry without Sources (a third-party repository) fails its part of the update; the others still count.
  const upd = run('apt-get', [...opts, '-q', 'update']);
  if (upd.err.includes('apt-get: ENOENT')) throw new SourceUnavailable('apt-get is not available: the tests are fetched from Debian\'s source packages');
  const dl = path.join(work, 'download');
  fs.mkdirSync(dl);
  const src = run('apt-get', [...opts, '-q', 'source', '--download-only', `${pkg}=${version}`], { cwd: dl });
  if (!src.ok) {
    // apt-get update exits 0 when fetches fail (it only warns): its warnings say why.
    const warned = upd.err.split('\n').filter((l) => /^[WE]: /.test(l)).join('\n');
    throw new SourceUnavailable(`apt-get source ${pkg}=${version} failed:\n${lastLines(src.err || src.out)}\n` +
      (warned ? `apt-get update (private state) said:\n${lastLines(warned)}\n` : '') +
      'Either Debian\'s mirrors could not be reached, or they no longer carry this version: upgrade qemu-utils to ' +
      'the version the mirror has, or point IOTESTS_QEMU_SOURCE at an extracted QEMU source tree');
  }
  const dsc = fs.readdirSync(dl).find((f) => f.endsWith('.dsc'));
  if (dsc === undefined) throw new SourceUnavailable(`apt-get source ${pkg}=${version} downloaded no .dsc file`);
  const tree = path.join(work, 'tree');
  const x = run('dpkg-source', ['-x', dsc, tree], { cwd: dl });
  if (!x.ok) {
    throw new SourceUnavailable(`dpkg-source -x ${dsc} failed (install dpkg-dev: apt-get install dpkg-dev):\n${lastLines(x.err || x.out)}`);
  }
  return tree;
}

function usable(dir: string): boolean {
  return fs.existsSync(path.join(dir, 'tests', 'qemu-iotests', 'check')) && fs.existsSync(path.join(dir, 'python', 'qemu'));
}

/**
 * The iotests matching the installed qemu-utils: from the cache, else fetched and extracted into it.
 * IOTESTS_QEMU_SOURCE names an extracted QEMU source tree to use instead (no fetch, no cache).
 * Throws SourceUnavailable when the tests cannot be had.
 */
export function iotestsSource(log: (s: string) => void = (s) => console.error(s)): IotestsSource {
  const given = process.env.IOTESTS_QEMU_SOURCE;
  if (given) {
    const dir = path.resolve(given);
    if (!usable(dir)) throw new SourceUnavailable(`IOTESTS_QEMU_SOURCE=${given} is not a QEMU source tree (no tests/qemu-iotests/check or python/qemu)`);
    return { dir, label: `QEMU source at ${dir}` };
  }
  const { pkg, version } = installedQemuSource();
  const label = `${pkg} ${version}`;
  const root = cacheRoot();
  const dir = path.join(root, `${pkg}-${version.replace(/[^A-Za-z0-9.+~-]/g, '_')}`);
  if (usable(dir)) return { dir, label };

  fs.mkdirSync(root, { recursive: true });
  const work = fs.mkdtempSync(path.join(root, '.fetch-'));
  try {
    const tree = fetchWithApt(pkg, version, work, log);
    // Keep only what `check` needs: the tests and QEMU's python package (12 MB of 300).
    const staged = path.join(work, 'staged');
    fs.mkdirSync(path.join(staged, 'tests'), { recursive: true });
    fs.renameSync(path.join(tree, 'tests', 'qemu-iotests'), path.join(staged, 'tests', 'qemu-iotests'));
    fs.renameSync(path.join(tree, 'python'), path.join(staged, 'python'));
    fs.writeFileSync(path.join(staged, 'SOURCE'), `${label}\n`);
    if (!usable(staged)) throw new SourceUnavailable(`${label} has no tests/qemu-iotests/check`);
    try {
      fs.renameSync(staged, dir);
    } catch (e) {
      if (!usable(dir)) throw e; // another run got there first
    }
    log(`iotests: ${label} tests cached in ${dir}`);
    return { dir, label };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}
