// The Image input schema and the provider's check/diff, as plain functions (no host).

import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UNKNOWN, imageInputSchema, imageInputSchemaPath, validateInputs } from '../../provider/resource/schema';
import type * as Impl from '../../provider/resource/impl';

// The compiled provider, through Node's own loader: it requires its engines at run time, which
// vitest's module runner does not follow into TypeScript sources.
const impl = require(path.resolve(__dirname, '../../dist/provider/resource/impl.js')) as typeof Impl;

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
  let dir: string;
  let outs: Impl.ImageOutputs;
  let file: string;
  let data: string;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-diff-'));
    file = path.join(dir, 'x.qcow2');
    data = path.join(dir, 'd.raw');
    outs = (await impl.create({ path: file, size: '1G', dataFile: data, dataFileRaw: true })).outs;
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  const same = () => ({ path: file, size: '1G', dataFile: data, dataFileRaw: true });

  it('check_refuses_combinations_create_would_refuse_on_the_property_with_a_way_forward_in_the_program', async () => {
    const r = await impl.check({}, { path: 'x.qcow2', size: '1G', dataFileRaw: true });
    expect(r.failures).toEqual([{ property: 'dataFileRaw', reason: 'data-file-raw requires data-file. Set dataFile to the raw file that holds the guest data, or remove dataFileRaw' }]);
    const b = await impl.check({}, { path: 'x.qcow2', size: '1G', dataFile: 'x.raw', dataFileRaw: true, backingFile: 'b.qcow2', backingFormat: 'qcow2' });
    expect(b.failures).toEqual([{ property: 'backingFile', reason: expect.stringMatching(/^Backing file and data-file-raw cannot be used at the same time\. .*Remove backingFile .*, or remove dataFileRaw to make an overlay$/) }]);
    expect((await impl.check({}, { path: 'x.qcow2' })).failures).toEqual([{ property: 'size', reason: expect.stringMatching(/^size is required .*\. Set size/) }]);
  });

  it('check_judges_an_overlay_whose_base_identity_is_not_known_yet', async () => {
    // A preview that creates the base: its identity is unknown, the overlay's create is still judged.
    const r = await impl.check({}, { path: 'x.qcow2', backingFile: 'b.qcow2', backingFormat: 'qcow2', backingIdentity: UNKNOWN, dataFile: 'x.raw', dataFileRaw: true });
    expect(r.failures.map((f) => f.reason).join()).toMatch(/Backing file and data-file-raw cannot be used at the same time/);
    expect((await impl.check({}, { path: 'x.qcow2', size: '1G', backingIdentity: { identity: 'sha256:0', from: '' }, acceptBacking: 'sha256:0123456789abcdef0123456789abcdef' })).failures).toEqual([]);
  });

  it('check_passes_unknown_values', async () => {
    expect((await impl.check({}, { path: 'x.qcow2', size: UNKNOWN, dataFile: UNKNOWN, dataFileRaw: true })).failures).toEqual([]);
  });

  it('diff_reports_no_change_when_the_image_matches', async () => {
    expect(await impl.diff('x', outs, same())).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
  });

  it('an_upgrade_of_the_package_plans_no_update', async () => {
    expect(await impl.diff('x', { ...outs, providerVersion: '0.0.1-old' }, same())).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
  });

  it('diff_refuses_a_backing_file_on_a_raw_image', async () => {
    await expect(impl.diff('x', outs, { ...same(), backingFile: '/b.qcow2', backingFormat: 'qcow2' }))
      .rejects.toThrow(/Backing file and data-file-raw cannot be used at the same time/);
  });

  it('diff_amends_a_grow_and_replaces_a_create_only_change_on_the_same_path_deleting_first', async () => {
    expect(await impl.diff('x', outs, { ...same(), size: '2G' })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: false });
    expect(await impl.diff('x', outs, { ...same(), clusterSize: 4096, allowReplace: true }))
      .toEqual({ changes: true, replaces: ['clusterSize'], deleteBeforeReplace: true });
  });

  it('diff_decides_against_the_image_on_disk_not_the_state', async () => {
    // The state says 2 GiB (as after an update that a refresh has not seen undone), the disk says 1 GiB.
    const stale = { ...outs, virtualSize: 2 * 2 ** 30 };
    expect(await impl.diff('x', stale, same())).toEqual({ changes: false, replaces: [], deleteBeforeReplace: false });
    await expect(impl.diff('x', stale, { ...same(), size: '2G' })).resolves.toMatchObject({ changes: true });
    // data-file-raw recorded off, but on on disk: asking for it is no change, not a refusal.
    expect((await impl.diff('x', { ...outs, dataFileRaw: false }, same())).changes).toBe(false);
  });
});
