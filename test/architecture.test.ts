// The rings, checked on the source: what each module imports or requires (statically or on
// demand), followed transitively. Nothing reaches up; the qemu-img engine does not use the
// native engine; a worker loads only the format engine, the rules and the model (and the bridge's
// client side for remote files); `qcow2 info`
// loads neither commander nor cli-progress.

import * as fs from 'fs';
import * as path from 'path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(__dirname, '..');
const PROVIDER = path.join(ROOT, 'provider');

/** Module specifiers a source file imports or requires (type-only imports excluded). */
function specifiers(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^\s*(?:import|export)\s+(?!type\b)[^'"]*?from\s+'([^']+)'/gm)) out.push(m[1]!);
  for (const m of text.matchAll(/\brequire\('([^']+)'\)|\bimport\('([^']+)'\)/g)) out.push((m[1] ?? m[2])!);
  return out;
}

/** A relative specifier as a repository path (provider/...ts), or the package name of a dependency. */
function resolve(from: string, spec: string): string {
  if (!spec.startsWith('.')) return spec.startsWith('node:') ? spec : spec.split('/').slice(0, spec.startsWith('@') ? 2 : 1).join('/');
  const base = path.resolve(path.dirname(from), spec);
  for (const c of [`${base}.ts`, path.join(base, 'index.ts')]) if (fs.existsSync(c)) return c;
  return base;
}

function closure(entry: string): Set<string> {
  const seen = new Set<string>();
  const todo = [path.join(PROVIDER, entry)];
  while (todo.length) {
    const f = todo.pop()!;
    if (seen.has(f)) continue;
    seen.add(f);
    if (!f.endsWith('.ts')) continue;
    for (const s of specifiers(f)) todo.push(resolve(f, s));
  }
  return seen;
}

const rel = (f: string) => path.relative(PROVIDER, f);
const local = (s: Set<string>) => [...s].filter((f) => f.startsWith(PROVIDER)).map(rel);
const deps = (s: Set<string>) => [...s].filter((f) => !f.startsWith('/'));

function files(dir: string): string[] {
  return fs.readdirSync(path.join(PROVIDER, dir), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts')).map((f) => path.join(PROVIDER, dir, f));
}

describe('architecture', () => {
  it('the_format_engine_and_the_model_reach_nothing_above_them', () => {
    for (const f of [...files('qcow2'), ...files('model')]) {
      const up = specifiers(f).map((s) => resolve(f, s)).filter((t) => t.startsWith(PROVIDER)).map(rel)
        .filter((t) => !t.startsWith('qcow2/') && !t.startsWith('model/'));
      expect(up, rel(f)).toEqual([]);
    }
    for (const f of files('rules')) {
      const up = specifiers(f).map((s) => resolve(f, s)).filter((t) => t.startsWith(PROVIDER)).map(rel)
        .filter((t) => !t.startsWith('rules/') && !t.startsWith('model/'));
      expect(up, `${rel(f)}: rules are pure`).toEqual([]);
    }
  });

  it('the_qemu_img_engine_does_not_use_the_native_engine', () => {
    const reached = local(closure('engines/qemuimg/engine.ts'));
    expect(reached.filter((f) => f.startsWith('engines/native/'))).toEqual([]);
  });

  it('a_worker_loads_the_format_engine_the_rules_and_the_model_only', () => {
    const reached = local(closure('engines/native/worker.ts'));
    const outside = reached.filter((f) => !/^(qcow2|rules|model)\//.test(f) &&
      !['engines/native/worker.ts', 'engines/native/dispatch.ts', 'engines/native/ops.ts', 'engines/native/maintenance.ts', 'engines/native/repair.ts', 'engines/native/protocol.ts',
        'engines/local-facts.ts', 'engines/refusal.ts', 'engines/chain.ts',
        // A remote target's files: synchronous calls through the bridge (no SSH in the worker).
        'transport/bridge.ts', 'transport/remote/hostfs.ts', 'transport/remote/protocol.ts'].includes(f));
    expect(outside).toEqual([]);
    expect(deps(closure('engines/native/worker.ts')).filter((d) => d.startsWith('@pulumi') || d === 'commander' || d === 'ssh2')).toEqual([]);
  });

  it('the_command_line_reaches_neither_the_worker_pool_nor_the_qemu_img_engine', () => {
    // What the CLI can reach is what its bundle (dist/provider/cli/qcow2-bundle.js) holds: only what it runs.
    const reached = local(closure('cli/main.ts'));
    expect(reached.filter((f) => f === 'engines/native/pool.ts' || f === 'engines/native/worker.ts' || f.startsWith('engines/qemuimg/'))).toEqual([]);
    expect(deps(closure('cli/main.ts')).filter((d) => d.startsWith('@pulumi') || d === 'ssh2' || d === 'undici' || d === 'ajv')).toEqual([]);
  });

  it('qcow2_info_loads_neither_commander_nor_cli_progress', () => {
    const reached = closure('cli/commands/info.ts');
    expect(deps(reached).filter((d) => d === 'commander' || d === 'cli-progress')).toEqual([]);
    expect(local(reached).filter((f) => f.startsWith('cli/commands/') && f !== 'cli/commands/info.ts')).toEqual([]);
  });

  it('the_resource_and_the_cli_touch_images_only_through_the_engine', () => {
    for (const f of [...files('resource'), ...files('cli')]) {
      const below = specifiers(f).map((s) => resolve(f, s)).filter((t) => t.startsWith(PROVIDER)).map(rel)
        .filter((t) => t.startsWith('engines/native/') || t.startsWith('engines/qemuimg/') ||
          (t.startsWith('qcow2/') && !/^qcow2\/ops\/(check|map)\.ts$/.test(t)));
      expect(below, `${rel(f)} (qcow2/ops/check and map only for their result types)`).toEqual([]);
    }
  });

  it('the_resource_reaches_files_only_through_the_engine', () => {
    // Existence and size of images and data files come from Engine.stat (on the engine's files,
    // which a remote target will make another host's); only the package's own files are read here.
    for (const f of files('resource').filter((x) => rel(x) !== 'resource/package-files.ts')) {
      expect(specifiers(f).filter((s) => s === 'fs' || s === 'fs/promises' || s === 'node:fs'), rel(f)).toEqual([]);
    }
  });
});
