// Deleting an image, the same for both engines: under QEMU's write lock (never an image a VM
// holds open), the data file only when asked, a backing file never.

import { HostFs, localFs } from '../qcow2/io/hostfs';
import { Image } from '../qcow2/meta/image';
import type { RemoveOptions } from './engine';

export function removeImageFiles(path: string, options: RemoveOptions = {}, host: HostFs = localFs): void {
  let dataFile: string | undefined;
  const f = host.open(path, 'write').file;
  try {
    host.lock(f, path, 'write'); // held until close
    if (options.dataFile) {
      const img = Image.open(f, path);
      if (img.hasDataFile) dataFile = img.header.dataFile;
    }
    host.unlink(path);
  } finally {
    f.close();
  }
  if (dataFile !== undefined) host.unlink(dataFile); // gone already is fine
}
