// A golden base image and one overlay per VM. Overlays read unchanged clusters from the base
// and take its size unless they name their own; growing an overlay is an in-place amend. Each
// overlay is wired to the golden Image (backingFile: golden), so Pulumi knows the dependency.
//
//   pulumi config set --path 'vms.web' 20G
//   pulumi config set --path 'vms.db' 40G     # a later step: db grows in place
//   pulumi config set goldenClusterSize 4096  # a new golden image: refused while overlays use it

import * as fs from 'fs';
import * as path from 'path';
import * as pulumi from '@pulumi/pulumi';
import { Image } from 'pulumi-qcow2';

const config = new pulumi.Config();
const dir = path.resolve(config.get('imageDir') ?? 'images');
fs.mkdirSync(dir, { recursive: true });
const vms = config.getObject<Record<string, string>>('vms') ?? { web: '20G', db: '20G' };

// A cluster size of its own means a new golden image (allowReplace says so); the overlays built on
// the old one refuse that plan at preview unless they have allowReplace themselves.
const goldenClusterSize = config.getNumber('goldenClusterSize');
const golden = new Image('golden', {
  path: path.join(dir, 'golden.qcow2'),
  size: config.get('goldenSize') ?? '20G',
  lazyRefcounts: true,
  ...(goldenClusterSize !== undefined ? { clusterSize: goldenClusterSize, allowReplace: true } : {}),
});

export const overlays = Object.entries(vms).map(([vm, size]) => {
  const img = new Image(`overlay-${vm}`, {
    path: path.join(dir, `${vm}.qcow2`),
    size,
    // The Image itself, not its path: the overlay follows the golden image's identity, so a plan
    // that would replace the golden image under it is refused at preview (set allowReplace on
    // the overlay to have it recreated instead), and growing the golden image is taken over.
    backingFile: golden,
    backingFormat: 'qcow2',
  });
  return { vm, path: img.path, virtualSize: img.virtualSize };
});
export const goldenPath = golden.path;
