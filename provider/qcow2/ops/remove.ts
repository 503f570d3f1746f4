// Deleting an image, the same for both engines: under QEMU's write lock (never an image a VM
// holds open), the data file only when asked, a backing file never. Through the host seam
// (HostFs), as every other whole-image operation.

import { HostFs, localFs } from '../io/hostfs';
import { Image } from '../meta/image';
import { resolveBackingName } from '../spec/backing';

export interface RemoveImageOptions {
  /** Also remove the external data file named in the image (only files we created). */
  dataFile?: boolean;
  /**
   * With dataFile: the data file as recorded when it was created. Only this path is removed, and
   * only while it is the same file (its identity "dev:ino"; without one, while the header still
   * names it). A name in the header is never followed to another file.
   */
  recordedDataFile?: { path: string; identity?: string };
}

export function removeImageFiles(path: string, options: RemoveImageOptions = {}, host: HostFs = localFs): void {
  let dataFile: string | undefined;
  const { file } = host.open(path, 'write');
  try {
    host.lock(file, path, 'write'); // held until the file is closed
    if (options.dataFile) {
      const img = Image.open(file, path);
      const named = img.hasDataFile && img.header.dataFile ? resolveBackingName(path, img.header.dataFile) : undefined;
      const recorded = options.recordedDataFile;
      if (recorded === undefined) dataFile = named;
      else if (recorded.identity !== undefined ? sameFile(host, recorded.path, recorded.identity) : named === recorded.path) dataFile = recorded.path;
    }
    host.unlink(path);
  } finally {
    file.close();
  }
  // Gone already is not an error; anything else names the data file (HostFs.unlink).
  if (dataFile !== undefined) host.unlink(dataFile);
}

/** `file` is still the file whose identity ("dev:ino") was recorded (a regular file, not replaced). */
function sameFile(host: HostFs, file: string, identity: string): boolean {
  try {
    const st = host.lstat(file);
    return st !== undefined && st.kind === 'file' && st.id === identity;
  } catch {
    return false;
  }
}
