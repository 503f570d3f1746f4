// Growing over a longer backing file from an old end inside a cluster the image does not own:
// QEMU fills the rest of that cluster by copy-on-write, which the native engine does not do in
// place. The resize planners find it in the tables; the refusal is the rules' (rules/amend.ts
// validateGrowOverBackingEnd), with its way forward, and the image is left as it was.

import * as fs from 'fs';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { resizeImage } from '../../provider/engines/native/ops';
import { validateGrowOverBackingEnd } from '../../provider/rules/amend';
import { qemuImg, skipWithoutQemuTools, tempDir } from '../qcow2/guest/harness';

describe('growing over a longer backing file from an old end inside a cluster', () => {
  it('the_rules_refuse_an_unowned_old_end_and_a_compressed_one_with_subclusters', () => {
    expect(validateGrowOverBackingEnd({})).toBeUndefined();
    expect(validateGrowOverBackingEnd({ owned: true })).toBeUndefined();
    expect(validateGrowOverBackingEnd({ owned: false })?.message).toMatch(/does not own.*Use the qemu-img engine, or resize to a multiple of the cluster size first/);
    expect(validateGrowOverBackingEnd({ compressedSubclusters: true })).toMatchObject({ property: 'size', message: expect.stringMatching(/compressed cluster.*qemu-img refuses too/) });
  });

  describe.skipIf(skipWithoutQemuTools('grow over backing end'))('on an image', () => {
    const root = tempDir('grow-over-backing-end');
    afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

    it('refuses_in_the_rules_words_and_leaves_the_image_unchanged', () => {
      const base = path.join(root, 'base.qcow2'), top = path.join(root, 'top.qcow2');
      qemuImg(['create', '-q', '-f', 'qcow2', base, '4M']);
      // 100 KiB: the old end is inside the overlay's second cluster, which it does not have.
      qemuImg(['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top, '100K']);
      const before = fs.readFileSync(top);
      let error: unknown;
      try {
        resizeImage(top, 4n << 20n);
      } catch (e) {
        error = e;
      }
      expect(error).toMatchObject({ code: 'REFUSED', message: validateGrowOverBackingEnd({ owned: false })!.message });
      expect(fs.readFileSync(top).equals(before)).toBe(true);
    });
  });
});
