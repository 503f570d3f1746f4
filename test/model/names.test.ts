// The one option <-> property table: both directions, the create-only list, QEMU's order.

import { describe, expect, it } from 'vitest';
import { CREATE_ONLY_PROPERTIES, CREATE_OPTIONS, isCreateOnly, optionOf, optionSpec, propertyOf, type PropertyName } from '../../provider/model/names';

describe('option <-> property names', () => {
  it('maps_every_managed_option_both_ways', () => {
    const managed = CREATE_OPTIONS.filter((o) => o.property !== undefined);
    expect(managed.map((o) => [o.name, o.property])).toEqual([
      ['cluster_size', 'clusterSize'], ['extended_l2', 'extendedL2'], ['preallocation', 'preallocation'], ['compression_type', 'compressionType'],
      ['size', 'size'], ['compat', 'compat'], ['backing_file', 'backingFile'], ['backing_fmt', 'backingFormat'], ['data_file', 'dataFile'],
      ['data_file_raw', 'dataFileRaw'], ['lazy_refcounts', 'lazyRefcounts'], ['refcount_bits', 'refcountBits'],
    ]);
    for (const o of managed) {
      expect(propertyOf(o.name)).toBe(o.property);
      expect(optionOf(o.property as PropertyName)).toBe(o.name);
    }
  });

  it('leaves_names_it_does_not_know_as_they_are', () => {
    expect(propertyOf('path')).toBe('path');
    expect(propertyOf('nocow')).toBe('nocow');
    expect(optionSpec('bogus')).toBeUndefined();
  });

  it('has_one_create_only_list', () => {
    expect([...CREATE_ONLY_PROPERTIES].sort()).toEqual(['clusterSize', 'compressionType', 'extendedL2', 'preallocation']);
    for (const o of ['cluster_size', 'preallocation', 'extended_l2', 'compression_type', 'encryption', 'encrypt.format', 'encrypt.anything', 'nocow', 'extent_size_hint']) {
      expect(isCreateOnly(o), o).toBe(true);
    }
    for (const o of ['size', 'compat', 'backing_file', 'backing_fmt', 'data_file', 'data_file_raw', 'lazy_refcounts', 'refcount_bits']) {
      expect(isCreateOnly(o), o).toBe(false);
    }
  });

  it('keeps_qemu_option_list_order_for_the_formatting_line', () => {
    expect(CREATE_OPTIONS.filter((o) => o.formatting).map((o) => o.name)).toEqual([
      'encryption', 'encrypt.format', 'cluster_size', 'extended_l2', 'preallocation', 'compression_type', 'size', 'compat', 'backing_file',
      'backing_fmt', 'data_file', 'data_file_raw', 'lazy_refcounts', 'refcount_bits', 'nocow', 'extent_size_hint',
    ]);
  });
});
