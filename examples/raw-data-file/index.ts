// Wrap an existing raw disk in qcow2 metadata without copying or changing a byte of it. With
// data-file-raw the raw file stays a complete disk image on its own, so tools that only know
// raw keep working, while qcow2 adds what raw lacks: a persistent dirty bitmap, the changed-block
// tracking behind incremental backup. Try it in steps:
//
//   pulumi up                                   # wrap disk.raw, data-file-raw on, bitmap "backup" added
//   qemu-io -f qcow2 -c 'write 1M 64k' images/disk.qcow2   # a guest writes (or a VM, or qemu-storage-daemon)
//   qcow2 bitmap --dump images/disk.qcow2 backup           # what changed since the last backup
//   qcow2 bitmap --clear images/disk.qcow2 backup          # after the incremental backup is taken
//   pulumi config set dataFileRaw false; pulumi up   # cleared in place
//   pulumi config set dataFileRaw true; pulumi preview   # refused: it cannot be set again
//
// While a VM holds the image, set `qmpSocket` (config `qmpSocket`) to its QMP socket: a bitmap
// change or a grow then goes through that QEMU, and any other change is refused until it stops.
//
// The raw disk comes from the `rawDisk` config; when it does not exist this demo makes a small
// sparse one, so the example runs anywhere.

import * as fs from 'fs';
import * as path from 'path';
import * as pulumi from '@pulumi/pulumi';
import { Image } from 'pulumi-qcow2';

const config = new pulumi.Config();
const dir = path.resolve(config.get('imageDir') ?? 'images');
fs.mkdirSync(dir, { recursive: true });
const rawDisk = path.resolve(config.get('rawDisk') ?? path.join(dir, 'disk.raw'));
if (!fs.existsSync(rawDisk)) {
  fs.writeFileSync(rawDisk, Buffer.from('demo boot sector\n'));
  fs.truncateSync(rawDisk, 64 * 1024 * 1024);
}

const disk = new Image('disk', {
  path: path.join(dir, 'disk.qcow2'),
  dataFile: rawDisk,
  dataFileRaw: config.getBoolean('dataFileRaw') ?? true,
  adopt: true, // wrap the existing raw file as it is; its size is the virtual size
  bitmaps: [{ name: 'backup' }],
  ...(config.get('qmpSocket') ? { qmpSocket: config.get('qmpSocket') } : {}),
});

export const qcow2Path = disk.path;
export const dataFile = disk.dataFile;
export const dataFileRaw = disk.dataFileRaw;
export const virtualSize = disk.virtualSize;
export const bitmaps = disk.bitmaps;
