// Backing file names as QEMU resolves them (block.c bdrv_make_absolute_filename over
// cutils.c path_combine): a relative name is relative to the folder of the image that stores
// it, by plain string concatenation; an absolute name, or one with a protocol prefix, stands as
// it is. The one resolver: `info` prints it as full-backing-filename, and every opener of a
// backing file (chains, create's size probe, rebase, the qemu-img engine) opens this name.

/** path_has_protocol: a ':' before any '/' ("nbd:host", "json:{...}"). */
export function hasProtocolPrefix(name: string): boolean {
  const stop = name.search(/[:/]/);
  return stop >= 0 && name[stop] === ':';
}

/** The name QEMU opens for backing name `backing` stored in the image named `imageName`. */
export function resolveBackingName(imageName: string, backing: string): string {
  if (imageName === '' || backing.startsWith('/') || hasProtocolPrefix(backing)) return backing;
  const slash = imageName.lastIndexOf('/');
  return slash < 0 ? backing : imageName.slice(0, slash + 1) + backing;
}
