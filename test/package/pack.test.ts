// What `npm pack` ships: the built provider, the schema, the policy pack, README, LICENSE and
// CHANGELOG; no tests, benchmarks, sources or source maps. Every entry point named in package.json
// is in the tarball, and every module they load is either shipped or a declared dependency.

import { spawnSync } from 'child_process';
import { builtinModules } from 'module';
import * as fs from 'fs';
import * as path from 'path';
import { beforeAll, describe, expect, it } from 'vitest';

const root = path.resolve(__dirname, '../..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
let files: string[] = [];

beforeAll(() => {
  if (!fs.existsSync(path.join(root, 'dist/provider/index.js'))) throw new Error('dist/ is not built: run `npm run build` (npm test does) first');
  // --ignore-scripts: `prepare` would rebuild dist/, which the test command has just done.
  const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  files = (JSON.parse(r.stdout) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map((f) => f.path).sort();
}, 60_000);

describe('npm pack', () => {
  it('ships_dist_schema_policy_readme_license_changelog_and_nothing_else', () => {
    const top = new Set(files.map((f) => (f.startsWith('dist/') ? f.split('/').slice(0, 2).join('/') : f.split('/')[0])));
    expect([...top].sort()).toEqual(['CHANGELOG.md', 'LICENSE', 'README.md', 'dist/provider', 'package.json', 'policy', 'schema']);
    expect(files.filter((f) => f.startsWith('policy/'))).toEqual([
      'policy/PulumiPolicy.yaml', 'policy/README.md', 'policy/index.ts', 'policy/package.json', 'policy/policies.ts', 'policy/size.ts', 'policy/tsconfig.json',
    ]);
    expect(files).toContain('schema/image.schema.json');
    expect(fs.readFileSync(path.join(root, 'LICENSE'), 'utf8')).toMatch(/Apache License\s+Version 2\.0, January 2004[\s\S]*END OF TERMS AND CONDITIONS/);
  });

  it('ships_no_tests_benchmarks_sources_or_source_maps', () => {
    expect(files.filter((f) => /(^|\/)(test|tests|bench|__tests__)\//.test(f) || /\.test\.|\.spec\./.test(f))).toEqual([]);
    expect(files.filter((f) => f.endsWith('.map'))).toEqual([]);
    // TypeScript sources only where they are the product: the policy pack (run by ts-node) and declarations.
    expect(files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts') && !f.startsWith('policy/'))).toEqual([]);
  });

  it('ships_every_entry_point_package_json_names', () => {
    const targets = (v: unknown): string[] => (typeof v === 'string' ? [v] : Object.values(v as object).flatMap(targets));
    const entries = [pkg.main, pkg.types, ...Object.values(pkg.bin as Record<string, string>), ...targets(pkg.exports)];
    for (const e of entries) expect(files, e).toContain(path.posix.normalize(e));
    // Only public entry points are exported: no wildcard that would expose every file.
    expect(Object.keys(pkg.exports).filter((k) => k.includes('*'))).toEqual([]);
    expect(pkg.exports['./dynamic'].default).toBe('./dist/provider/resource/impl.js');
  });

  it('every_module_the_entry_points_load_is_shipped_or_a_declared_dependency', () => {
    const shipped = new Set(files);
    const declared = new Set([...Object.keys(pkg.dependencies ?? {}), ...Object.keys(pkg.peerDependencies ?? {})]);
    const builtins = new Set(builtinModules.flatMap((m) => [m, `node:${m}`]));
    const missing: string[] = [];
    const seen = new Set<string>();
    const visit = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = fs.readFileSync(path.join(root, file), 'utf8');
      for (const [, spec] of text.matchAll(/\brequire\(["']([^"']+)["']\)/g)) {
        if (spec!.startsWith('.')) {
          const base = path.posix.join(path.posix.dirname(file), spec!);
          const hit = [base, `${base}.js`, `${base}.json`, `${base}/index.js`].find((c) => shipped.has(c));
          if (hit) visit(hit);
          else missing.push(`${file}: ${spec}`);
        } else {
          const name = spec!.startsWith('@') ? spec!.split('/').slice(0, 2).join('/') : spec!.split('/')[0]!;
          if (!builtins.has(spec!) && !builtins.has(name) && !declared.has(name)) missing.push(`${file}: ${spec} (not a dependency)`);
        }
      }
    };
    const jsTargets = (v: unknown): string[] => (typeof v === 'string' ? (v.endsWith('.js') ? [v] : []) : Object.values(v as object).flatMap(jsTargets));
    for (const e of [pkg.main, ...Object.values(pkg.bin as Record<string, string>), ...jsTargets(pkg.exports)]) visit(path.posix.normalize(e));
    expect(missing).toEqual([]);
    expect(seen.size).toBeGreaterThan(10);
  });
});
