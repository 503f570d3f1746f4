// Files of this package itself (package.json, the shipped schema), found from this folder up to
// the package root: provider/resource in the source tree, dist/provider/resource when built.
// Never a user's file: images are reached through the Engine only.

import { existsSync, readFileSync } from 'fs';
import { dirname, join } from 'path';

/** The first `relative` path that exists, and that `accept` takes, in this folder or one above. */
export function findPackageFile(relative: string, accept: (file: string) => boolean = () => true): string | undefined {
  for (let dir = __dirname, i = 0; i < 5; i++, dir = dirname(dir)) {
    const p = join(dir, relative);
    if (existsSync(p) && accept(p)) return p;
  }
  return undefined;
}

/** A package file's text. */
export function readPackageFile(file: string): string {
  return readFileSync(file, 'utf8');
}
