// Backing file names resolved as QEMU resolves them (bdrv_make_absolute_filename, path_combine):
// the one resolver that info, chains, create's size probe, rebase and the qemu-img engine use.

import { describe, expect, it } from 'vitest';
import { hasProtocolPrefix, resolveBackingName } from '../../../provider/qcow2/spec/backing';

describe('backing file names', () => {
  it.each([
    ['/images/vm.qcow2', 'base.qcow2', '/images/base.qcow2'],
    ['/images/vm.qcow2', 'sub/base.qcow2', '/images/sub/base.qcow2'],
    ['/images/vm.qcow2', '../base.qcow2', '/images/../base.qcow2'], // concatenated, not normalized
    ['vm.qcow2', 'base.qcow2', 'base.qcow2'], // no folder: relative to the working directory
    ['a/vm.qcow2', 'base.qcow2', 'a/base.qcow2'],
    ['/images/vm.qcow2', '/elsewhere/base.qcow2', '/elsewhere/base.qcow2'],
    ['/images/vm.qcow2', 'nbd:host:10809', 'nbd:host:10809'], // a protocol: as it is
    ['/images/vm.qcow2', 'json:{"a":1}', 'json:{"a":1}'],
    ['/images/vm.qcow2', './nbd:x', '/images/./nbd:x'], // a '/' before the ':': a file
    ['', 'base.qcow2', 'base.qcow2'],
  ])('image %s, backing %s opens %s', (image, backing, full) => {
    expect(resolveBackingName(image, backing)).toBe(full);
  });

  it('a_protocol_prefix_is_a_colon_before_any_slash', () => {
    expect(hasProtocolPrefix('nbd:x')).toBe(true);
    expect(hasProtocolPrefix('a b:c')).toBe(true);
    expect(hasProtocolPrefix(':x')).toBe(true);
    expect(hasProtocolPrefix('dir/a:b')).toBe(false);
    expect(hasProtocolPrefix('plain.qcow2')).toBe(false);
  });
});
