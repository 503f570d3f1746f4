// Quick start: a golden base image, two overlays on it, and a data-file-raw image whose data
// file stays a valid raw disk. Images go to the folder named by the `imageDir` config
// (default: ./images in this project).

import * as fs from 'fs';
import * as path from 'path';
import * as pulumi from '@pulumi/pulumi';
import { Image } from 'pulumi-qcow2';

const config = new pulumi.Config();
const dir = path.resolve(config.get('imageDir') ?? 'images');
fs.mkdirSync(dir, { recursive: true });

const base = new Image('base', {
  path: path.join(dir, 'base.qcow2'),
  size: config.get('baseSize') ?? '20G',
});

// Overlays take their size from the base; each VM writes only its own changes. backingFile is
// the base Image itself: a change that would replace the base under them is refused at preview.
const overlays = ['vm1', 'vm2'].map((vm) => new Image(vm, {
  path: path.join(dir, `${vm}.qcow2`),
  backingFile: base,
  backingFormat: 'qcow2',
}));

// A raw disk with qcow2 metadata beside it: data-file-raw keeps data.raw a standalone image.
const data = new Image('data', {
  path: path.join(dir, 'data.qcow2'),
  size: config.get('dataSize') ?? '10G',
  dataFile: path.join(dir, 'data.raw'),
  dataFileRaw: true,
});

export const basePath = base.path;
export const overlayPaths = overlays.map((o) => o.path);
export const dataFile = data.dataFile;
export const dataVirtualSize = data.virtualSize;
