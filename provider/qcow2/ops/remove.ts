// Deleting an image, the same for both engines: under QEMU's write lock (never an image a VM
// holds open), the data file only when asked, a backing file never. Through the host seam
// (HostFs), as every other whole-image operation.

import { HostFs, localFs } from '../io/hostfs';
import { Image } from '../meta/image';

export interface RemoveImageOptions {
  /** Also remove the image's external data file (when it has one). */
  dataFile?: boolean;
}

export function removeImageFiles(path: string, options: RemoveImageOptions = {}, host: HostFs = localFs): void {
  let dataFile: string | undefined;
  const { file } = host.open(path, 'write');
  try {
    host.lock(file, path, 'write'); // held until the file is closed
    if (options.dataFile) {
      const img = Image.open(file, path);
      if (img.hasDataFile) dataFile = img.header.dataFile;
    }
    host.unlink(path);
  } finally {
    file.close();
  }
  // Gone already is not an error; anything else names the data file (HostFs.unlink).
  if (dataFile !== undefined) host.unlink(dataFile);
}
