// The Image input schema and the provider's check/diff, as plain functions (no host).

import * as fs from 'fs';
import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { UNKNOWN, imageInputSchema, imageInputSchemaPath, validateInputs } from '../../provider/resource/schema';
import * as impl from '../../provider/resource/impl';

describe('Image input schema', () => {
  it('is_the_file_shipped_in_the_package', () => {
    expect(path.relative(path.resolve(__dirname, '../..'), imageInputSchemaPath)).toBe(path.join('schema', 'image.schema.json'));
    expect(JSON.parse(fs.readFileSync(imageInputSchemaPath, 'utf8'))).toEqual(imageInputSchema);
  });

  it.each([
    [{ path: 'a.qcow2', size: '20G' }],
    [{ path: 'a.qcow2', size: 21474836480 }],
    [{ path: 'a.qcow2', size: '1.5T', clusterSize: 2097152, refcountBits: 64, compat: '1.1', extendedL2: true }],
    [{ path: 'a.qcow2', dataFile: 'a.raw', dataFileRaw: true, adopt: true, engine: 'qemu-img', dataFileOnDelete: 'keep' }],
  ])('accepts %j', (inputs) => {
    expect(validateInputs(inputs)).toEqual([]);
  });

  it('lets_unknown_values_through_even_where_a_number_or_enum_is_expected', () => {
    // An unknown path (say, computed from another resource's output) is present, not missing.
    expect(validateInputs({ path: UNKNOWN, size: UNKNOWN, clusterSize: UNKNOWN, compat: UNKNOWN, lazyRefcounts: UNKNOWN })).toEqual([]);
  });

  it('reports_one_failure_per_bad_property_naming_what_is_allowed', () => {
    const f = validateInputs({ path: 'a.qcow2', size: 'lots', clusterSize: 1000, compat: '2.0', refcountBits: 3, engine: 'vmware', colour: 'red' });
    expect(f.map((x) => x.property).sort()).toEqual(['clusterSize', 'colour', 'compat', 'engine', 'refcountBits', 'size']);
    expect(f.find((x) => x.property === 'compat')!.reason).toMatch(/one of "1.1", "0.10"|one of "0.10", "1.1"/);
    expect(f.find((x) => x.property === 'colour')!.reason).toMatch(/not an Image input/);
  });

  it('requires_a_path', () => {
    expect(validateInputs({ size: '1G' })).toEqual([{ property: 'path', reason: expect.stringMatching(/^'path' is required/) }]);
  });
});

describe('provider check and diff (in process)', () => {
  const outs = (over: Partial<impl.ImageOutputs> = {}): impl.ImageOutputs => ({
    path: path.resolve('x.qcow2'), host: '', engine: 'native', virtualSize: 1 << 30, actualSize: 0, clusterSize: 65536, compat: '1.1',
    refcountBits: 16, lazyRefcounts: false, extendedL2: false, compressionType: 'zlib', dataFile: '/d.raw', dataFileRaw: true,
    backingFile: '', backingFormat: '', dirty: false, corrupt: false, snapshots: 0, bitmaps: [], preallocation: 'metadata',
    createdDataFile: true, adopted: false, dataFileOnDelete: 'auto', deleteAdopted: false, providerVersion: impl.PROVIDER_VERSION, ...over,
  });

  it('check_refuses_combinations_create_would_refuse_on_the_property', async () => {
    const r = await impl.check({}, { path: 'x.qcow2', size: '1G', dataFileRaw: true });
    expect(r.failures).toEqual([{ property: 'dataFileRaw', reason: 'data-file-raw requires data-file' }]);
  });

  it('check_passes_unknown_values', async () => {
    expect((await impl.check({}, { path: 'x.qcow2', size: UNKNOWN, dataFile: UNKNOWN, dataFileRaw: true })).failures).toEqual([]);
  });

  it('diff_reports_no_change_when_the_image_matches', async () => {
    expect(await impl.diff('x', outs(), { path: 'x.qcow2', size: '1G', dataFile: '/d.raw', dataFileRaw: true }))
      .toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
  });

  it('diff_refuses_enabling_data_file_raw_and_a_backing_file_on_a_raw_image', async () => {
    await expect(impl.diff('x', outs({ dataFileRaw: false }), { path: 'x.qcow2', size: '1G', dataFile: '/d.raw', dataFileRaw: true }))
      .rejects.toThrow(/data-file-raw cannot be set on existing images/);
    await expect(impl.diff('x', outs(), { path: 'x.qcow2', size: '1G', dataFile: '/d.raw', backingFile: '/b.qcow2', backingFormat: 'qcow2' }))
      .rejects.toThrow(/Backing file and data-file-raw cannot be used at the same time/);
  });

  it('diff_amends_a_grow_and_replaces_a_create_only_change_on_the_same_path_deleting_first', async () => {
    expect(await impl.diff('x', outs(), { path: 'x.qcow2', size: '2G', dataFile: '/d.raw' })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    expect(await impl.diff('x', outs(), { path: 'x.qcow2', size: '1G', dataFile: '/d.raw', clusterSize: 4096, allowReplace: true }))
      .toEqual({ changes: true, replaces: ['clusterSize'], deleteBeforeReplace: true });
  });

  it('diff_reports_a_change_when_the_provider_code_changed', async () => {
    expect((await impl.diff('x', outs({ providerVersion: '0.0.1-old' }), { path: 'x.qcow2', size: '1G' })).changes).toBe(true);
  });
});
