// Backing file names as QEMU resolves them: defined once in the model (no I/O), used here by
// every opener of a backing file.

export { hasProtocolPrefix, resolveBackingName } from '../../model/backing-name';
