// Deleting an image, the same for both engines: under QEMU's write lock (never an image a VM
// holds open), the data file only when asked, a backing file never.

import * as fs from 'fs';
import { NodeBlockFile } from '../qcow2/io/blockfile';
import { Qcow2Error } from '../model/errors';
import { Image } from '../qcow2/meta/image';
import { lockImage } from '../qcow2/io/lock';
import type { RemoveOptions } from './engine';

export function removeImageFiles(path: string, options: RemoveOptions = {}): void {
  let dataFile: string | undefined;
  const f = NodeBlockFile.open(path, true);
  try {
    lockImage(f.fd, path, 'write'); // held until close
    if (options.dataFile) {
      const img = Image.open(f, path);
      if (img.hasDataFile) dataFile = img.header.dataFile;
    }
    fs.unlinkSync(path);
  } finally {
    f.close();
  }
  if (dataFile === undefined) return;
  try {
    fs.unlinkSync(dataFile);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new Qcow2Error('IO', `Could not remove data file '${dataFile}': ${(e as Error).message}`, { file: dataFile });
    }
  }
}
