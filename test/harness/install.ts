// The package as users install it, made once per test run and shared by the test files that need
// it: `npm pack` of this checkout, then installs of the tarball into fresh folders (a bare user
// project, a project with the examples' dependencies, the policy pack's own install). Test files
// run in parallel processes, so each artefact is built under a lock by whichever asks first.
// Installing once and copying node_modules (hard links) into each project keeps the run short.

import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { inject } from 'vitest';

const root = path.resolve(__dirname, '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));

/**
 * How long a harness test may run before it counts as hung: half an hour, the goal for a whole CI
 * run. Not a speed budget: a project's runs start several node processes each, and on a loaded
 * machine (or while the examples wait for a slot, which vitest counts) they take many minutes.
 */
export const HANG_MS = 30 * 60_000;

/** The folder this test run shares between files (made and removed by test/harness/global-setup.ts). */
export function runDir(): string {
  return inject('harnessDir');
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const building = new Map<string, Promise<string>>();

/** Build `name` once per run: the first caller runs `make`, the others (in any test file) wait for it. */
function once(name: string, make: (dir: string) => Promise<void>): Promise<string> {
  let p = building.get(name);
  if (!p) {
    p = build(name, make);
    building.set(name, p);
  }
  return p;
}

async function build(name: string, make: (dir: string) => Promise<void>): Promise<string> {
  const dir = path.join(runDir(), name);
  const done = `${dir}.done`;
  const failed = `${dir}.failed`;
  try {
    fs.mkdirSync(dir);
  } catch {
    // Another test file is building it: wait for its verdict (each step is bounded by npm's own timeouts).
    while (!fs.existsSync(done) && !fs.existsSync(failed)) await sleep(200);
    if (fs.existsSync(failed)) throw new Error(`${name}: ${fs.readFileSync(failed, 'utf8')}`);
    return dir;
  }
  try {
    await make(dir);
    fs.writeFileSync(done, '');
  } catch (e) {
    fs.writeFileSync(failed, (e as Error).message);
    throw e;
  }
  return dir;
}

function run(cmd: string, args: string[], cwd: string): Promise<string> {
  const env = { ...process.env };
  for (const k of ['NODE_OPTIONS', 'NODE_PATH', 'VITEST', 'VITEST_POOL_ID', 'VITEST_WORKER_ID']) delete env[k];
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} ${args.join(' ')} (in ${cwd}) failed with ${code}: ${out}`))));
  });
}

/** npm's install, as a user runs it; --prefer-offline uses the cache the checkout's `npm ci` filled. */
function npmInstall(dir: string, specs: string[] = []): Promise<string> {
  return run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error', ...specs], dir);
}

/** The packed tarball of this checkout (dist/ must be built: `npm test` builds it first). */
export async function tarball(): Promise<string> {
  const dir = await once('pack', async (d) => {
    if (!fs.existsSync(path.join(root, 'dist/provider/index.js'))) throw new Error('dist/ is not built: run `npm run build` first');
    // --ignore-scripts: `prepare` would rebuild dist/, which the test command has just built.
    await run('npm', ['pack', '--ignore-scripts', '--pack-destination', d], root);
  });
  return path.join(dir, `${pkg.name}-${pkg.version}.tgz`);
}

const sdkVersion: string = pkg.devDependencies['@pulumi/pulumi'];

/**
 * A user's project folder with only the tarball and @pulumi/pulumi installed (`npm install
 * ./pulumi-qcow2-x.y.z.tgz @pulumi/pulumi`): TypeScript programs then run on the SDK's vendored
 * TypeScript and ts-node, as they would for such a user.
 */
export function bareInstall(): Promise<string> {
  return once('bare', async (d) => {
    fs.writeFileSync(path.join(d, 'package.json'), JSON.stringify({ name: 'qcow2-user', private: true }, null, 2));
    await npmInstall(d, [await tarball(), `@pulumi/pulumi@${sdkVersion}`]);
  });
}

/** The examples' dependencies (union of their package.json), with pulumi-qcow2 from the tarball. */
export function examplesInstall(): Promise<string> {
  return once('examples', async (d) => {
    const deps: Record<string, string> = {};
    const examples = path.join(root, 'examples');
    for (const e of fs.readdirSync(examples)) {
      const p = JSON.parse(fs.readFileSync(path.join(examples, e, 'package.json'), 'utf8'));
      Object.assign(deps, p.dependencies, p.devDependencies);
    }
    deps['pulumi-qcow2'] = `file:${await tarball()}`;
    fs.writeFileSync(path.join(d, 'package.json'), JSON.stringify({ name: 'qcow2-examples', private: true, dependencies: deps }, null, 2));
    await npmInstall(d);
  });
}

/**
 * The policy pack as README and policy/README.md tell a user to set it up: copied out of the
 * installed package (node_modules/pulumi-qcow2/policy) and given its own `npm install`.
 */
export function policyInstall(): Promise<string> {
  return once('policy', async (d) => {
    const shipped = path.join(await bareInstall(), 'node_modules', 'pulumi-qcow2', 'policy');
    fs.cpSync(shipped, d, { recursive: true });
    await npmInstall(d);
  });
}

/**
 * A fresh project at `dest`: the files of `source` (a folder with Pulumi.yaml; node_modules and
 * anything named in `skip` left out) and, hard-linked, the node_modules of `install`.
 */
export async function projectCopy(source: string, dest: string, install: string, skip: string[] = []): Promise<string> {
  fs.cpSync(source, dest, {
    recursive: true,
    filter: (src) => {
      const rel = path.relative(source, src);
      return !rel.split(path.sep).includes('node_modules') && !skip.some((s) => rel === s || rel.startsWith(`${s}${path.sep}`));
    },
  });
  await run('cp', ['-al', path.join(install, 'node_modules'), path.join(dest, 'node_modules')], dest);
  return dest;
}
