// Commit legality, in qemu-img 7.2's words: there must be a backing file, and a base named
// with -b must be in the image's chain. Beyond qemu-img: commit writes only into regular files
// (the base it found in the chain, and the image itself when it empties it), never into a
// device or anything else a backing name might point at.

import type { CommitFacts, CommitRequest, Refusal } from './types';

export function validateCommit(req: CommitRequest, facts: CommitFacts): Refusal | undefined {
  if (!facts.hasBacking) return { property: 'backing_file', message: 'Image does not have a backing file' };
  if (req.base !== undefined && !facts.baseFound) {
    return { property: 'base', message: `Did not find '${req.base}' in the backing chain of '${facts.file}'` };
  }
  if (facts.notRegular !== undefined) {
    return {
      property: 'base',
      message: `'${facts.notRegular}' is not a regular file: commit writes only into regular image files. ` +
        'Convert the chain into a new image instead (qcow2 convert)',
    };
  }
  return undefined;
}
