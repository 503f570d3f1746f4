// Make `require('pulumi-qcow2')` work for the examples and the root quick start in a clone:
// node_modules/pulumi-qcow2 -> the repository, so programs here use this checkout's build and
// share its single copy of @pulumi/pulumi. Installed packages never run this (it is dev-only).
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const link = path.join(root, 'node_modules', 'pulumi-qcow2');
if (!fs.existsSync(path.join(root, 'node_modules'))) process.exit(0);
try {
  const st = fs.lstatSync(link);
  if (st.isSymbolicLink() && path.resolve(path.dirname(link), fs.readlinkSync(link)) === root) process.exit(0);
  fs.rmSync(link, { recursive: true, force: true });
} catch {
  // not there yet
}
fs.symlinkSync(path.relative(path.dirname(link), root), link, 'dir');
