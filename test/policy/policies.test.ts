// Each policy of the qcow2 pack (policy/policies.ts), called the way @pulumi/policy's analyzer
// calls it: validateResource(args, reportViolation) with the Image's inputs wrapped in
// unknownCheckingProxy, so that reading a value unknown during preview throws UnknownValueError.

import * as policySdk from '@pulumi/policy';
import type { ResourceValidationArgs, ResourceValidationPolicy } from '@pulumi/policy';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_ALLOWED_DIRECTORIES,
  IMAGE_TYPE,
  allowedPaths,
  compat11,
  maxSize,
  noBackingOnRaw,
  policies,
  preferDataFileRaw,
  read,
  refcount16,
  UNKNOWN as UNKNOWN_INPUT,
} from '../../policy/policies';
import { describeSize, parseSize } from '../../policy/size';
import { parseSize as projectParseSize } from '../../provider/model/size';
import { Image } from '../../provider/resource/image';

// Not in @pulumi/policy's typings (proxy.d.ts is empty), exported at run time.
const { unknownCheckingProxy, UnknownValueError } = policySdk as unknown as {
  unknownCheckingProxy<T extends object>(o: T): T;
  UnknownValueError: new (...args: never[]) => Error;
};

/** What the engine sends for any input not known during preview. */
const UNKNOWN = '04da6b54-80e4-46f7-96ec-b56ff0331ba9';
const UNKNOWN_BOOL = '1c4a061d-8072-4f0a-a4cb-0ff528b18fe7';
const IMAGES = '/var/lib/libvirt/images';

type Props = Record<string, unknown>;

/** Inputs of `new Image(...)` as the analyzer receives them: the args plus the serialized provider. */
function image(args: Props): Props {
  return { __provider: 'exports.handler = __f0;\nfunction __f0() { return require("pulumi-qcow2/dynamic"); }', ...args };
}

function argsFor(props: Props, config: object = {}, type = IMAGE_TYPE): ResourceValidationArgs {
  const proxied = unknownCheckingProxy(props);
  return {
    type,
    props: proxied,
    urn: `urn:pulumi:dev::vms::${type}::disk`,
    name: 'disk',
    opts: {
      protect: false,
      ignoreChanges: [],
      aliases: [],
      customTimeouts: { createSeconds: 0, updateSeconds: 0, deleteSeconds: 0 },
      additionalSecretOutputs: [],
    },
    stackTags: new Map(),
    isType: (cls) => (cls as unknown as { __pulumiType?: string }).__pulumiType === type,
    asType: ((cls: unknown) => ((cls as { __pulumiType?: string }).__pulumiType === type ? proxied : undefined)) as ResourceValidationArgs['asType'],
    getConfig: <T extends object>() => config as T,
    notApplicable: (reason?: string): never => {
      throw new Error(`not applicable: ${reason}`);
    },
  };
}

/** The messages a policy reports for these inputs. */
async function violations(policy: ResourceValidationPolicy, props: Props, config: object = {}, type = IMAGE_TYPE): Promise<string[]> {
  const messages: string[] = [];
  const vs = Array.isArray(policy.validateResource) ? policy.validateResource : [policy.validateResource!];
  for (const v of vs) await v(argsFor(props, config, type), (m) => messages.push(m));
  return messages;
}

/** A plain, compliant image: a qcow2 wrapping a raw data file under the default directory. */
const GOOD = image({
  path: `${IMAGES}/vm1.qcow2`,
  size: '20G',
  dataFile: `${IMAGES}/vm1.raw`,
  dataFileRaw: true,
  compat: '1.1',
  refcountBits: 16,
});

describe('the pack', () => {
  it('has the six policies with their levels, all bound to the Image type token', () => {
    expect(policies.map((p) => [p.name, p.enforcementLevel])).toEqual([
      ['qcow2-no-backing-on-raw', 'mandatory'],
      ['qcow2-allowed-paths', 'mandatory'],
      ['qcow2-compat-1.1', 'mandatory'],
      ['qcow2-prefer-data-file-raw', 'advisory'],
      ['qcow2-max-size', 'advisory'],
      ['qcow2-refcount-16', 'advisory'],
    ]);
    expect(IMAGE_TYPE).toBe(Image.__pulumiType);
    for (const p of policies) {
      expect((p.validateResource as { __pulumiType?: string }).__pulumiType).toBe(Image.__pulumiType);
    }
  });

  it('passes a compliant image, with and without optional inputs', async () => {
    for (const p of policies) {
      expect(await violations(p, GOOD), p.name).toEqual([]);
      expect(await violations(p, image({ path: `${IMAGES}/plain.qcow2`, size: 21474836480 })), p.name).toEqual([]);
    }
  });

  it('ignores resources of other types', async () => {
    const bad = { path: 'relative.qcow2', compat: '0.10', refcountBits: 1, size: '1E', dataFile: 'x.raw', dataFileRaw: true, backingFile: 'b' };
    for (const p of policies) expect(await violations(p, bad, {}, 'pulumi-nodejs:dynamic:Resource'), p.name).toEqual([]);
  });

  it('skips, never reports, when every input is unknown (preview)', async () => {
    const keys = ['path', 'size', 'dataFile', 'dataFileRaw', 'backingFile', 'backingFormat', 'compat', 'refcountBits', 'adopt'];
    const allUnknown = image(Object.fromEntries(keys.map((k) => [k, UNKNOWN])));
    for (const p of policies) expect(await violations(p, allUnknown), p.name).toEqual([]);
  });

  it('read() turns the proxy\'s UnknownValueError (and bare sentinels) into UNKNOWN, nothing else', () => {
    const props = unknownCheckingProxy({ a: UNKNOWN, b: 'x', c: UNKNOWN_BOOL }) as Props;
    expect(() => props.a).toThrow(UnknownValueError);
    expect(read(props, 'a')).toBe(UNKNOWN_INPUT);
    expect(read(props, 'c')).toBe(UNKNOWN_INPUT);
    expect(read(props, 'b')).toBe('x');
    expect(read(props, 'missing')).toBeUndefined();
    expect(read({ a: UNKNOWN }, 'a')).toBe(UNKNOWN_INPUT);
    const throwing = new Proxy({}, { get: () => { throw new TypeError('boom'); } }) as Props;
    expect(() => read(throwing, 'a')).toThrow('boom');
  });
});

describe('qcow2-no-backing-on-raw (mandatory)', () => {
  const overlay = image({
    path: `${IMAGES}/vm1.qcow2`,
    size: '20G',
    dataFile: `${IMAGES}/vm1.raw`,
    dataFileRaw: true,
    backingFile: `${IMAGES}/base.qcow2`,
    backingFormat: 'qcow2',
  });

  it('refuses a backing file on a data-file-raw image, saying why and what to do', async () => {
    const [m, ...rest] = await violations(noBackingOnRaw, overlay);
    expect(rest).toEqual([]);
    expect(m).toContain(`backingFile "${IMAGES}/base.qcow2" is set on an image with dataFileRaw: true`);
    expect(m).toContain('data-file-raw keeps the data file a complete raw image');
    expect(m).toContain('Clear dataFileRaw first');
    expect(m).toContain('use a plain base');
  });

  it('passes a backing file without data-file-raw, and data-file-raw without a backing file', async () => {
    expect(await violations(noBackingOnRaw, { ...overlay, dataFileRaw: false })).toEqual([]);
    expect(await violations(noBackingOnRaw, { ...overlay, dataFile: undefined, dataFileRaw: undefined })).toEqual([]);
    expect(await violations(noBackingOnRaw, { ...overlay, backingFile: undefined, backingFormat: undefined })).toEqual([]);
  });

  it('skips while dataFileRaw or backingFile is unknown', async () => {
    expect(await violations(noBackingOnRaw, { ...overlay, dataFileRaw: UNKNOWN })).toEqual([]);
    expect(await violations(noBackingOnRaw, { ...overlay, dataFileRaw: UNKNOWN_BOOL })).toEqual([]);
    expect(await violations(noBackingOnRaw, { ...overlay, backingFile: UNKNOWN })).toEqual([]);
  });
});

describe('qcow2-allowed-paths (mandatory)', () => {
  const confined = { allowedDirectories: [IMAGES] };

  it('passes any absolute path by default (so every example passes), and paths under the configured directories', async () => {
    expect(DEFAULT_ALLOWED_DIRECTORIES).toEqual(['/']);
    expect(await violations(allowedPaths, image({ path: '/home/me/vms/vm1.qcow2', dataFile: '/tmp/vm1.raw', backingFile: '/srv/base.qcow2' }))).toEqual([]);
    expect(await violations(allowedPaths, image({
      path: `${IMAGES}/vm1.qcow2`, dataFile: `${IMAGES}/raw/vm1.raw`, backingFile: `${IMAGES}/base.qcow2`, backingFormat: 'qcow2',
    }), confined)).toEqual([]);
  });

  it('refuses relative paths, one message per input', async () => {
    const ms = await violations(allowedPaths, image({ path: 'vm1.qcow2', size: '20G', dataFile: './vm1.raw', backingFile: '../base.qcow2' }));
    expect(ms).toHaveLength(3);
    expect(ms[0]).toBe(
      'path "vm1.qcow2" is a relative path. The Image resolves it against the directory the Pulumi program runs in, ' +
        'so the file would land wherever the program happens to run. Use an absolute path.',
    );
    expect(ms[1]).toMatch(/^dataFile "\.\/vm1\.raw" is a relative path\./);
    expect(ms[2]).toMatch(/^backingFile "\.\.\/base\.qcow2" is a relative path\./);
    expect((await violations(allowedPaths, image({ path: 'vm1.qcow2' }), confined))[0]).toMatch(new RegExp(`Use an absolute path under "${IMAGES}"\\.$`));
  });

  it('refuses absolute paths outside the allowed directories, and escapes through ".."', async () => {
    const ms = await violations(allowedPaths, image({
      path: '/tmp/vm1.qcow2',
      dataFile: `${IMAGES}/../../../../etc/shadow`,
      backingFile: '/var/lib/libvirt/images-old/base.qcow2', // a sibling sharing the prefix
    }), confined);
    expect(ms).toEqual([
      `path "/tmp/vm1.qcow2" is outside the allowed directories "${IMAGES}". Put the file under one of them, or add its directory to this policy's allowedDirectories config.`,
      `dataFile "${IMAGES}/../../../../etc/shadow" (it resolves to "/etc/shadow") is outside the allowed directories "${IMAGES}". Put the file under one of them, or add its directory to this policy's allowedDirectories config.`,
      `backingFile "/var/lib/libvirt/images-old/base.qcow2" is outside the allowed directories "${IMAGES}". Put the file under one of them, or add its directory to this policy's allowedDirectories config.`,
    ]);
    // The directory itself is not a file under it, nor is "/" by default.
    expect(await violations(allowedPaths, image({ path: `${IMAGES}/` }), confined)).toHaveLength(1);
    expect(await violations(allowedPaths, image({ path: '/' }))).toHaveLength(1);
  });

  it('uses the configured allowedDirectories (trailing slashes and "/" handled)', async () => {
    const config = { allowedDirectories: ['/srv/images/', '/data/vm'] };
    expect(await violations(allowedPaths, image({ path: '/srv/images/a.qcow2', dataFile: '/data/vm/x/a.raw' }), config)).toEqual([]);
    const ms = await violations(allowedPaths, image({ path: `${IMAGES}/a.qcow2`, backingFile: 'base.qcow2' }), config);
    expect(ms).toEqual([
      `path "${IMAGES}/a.qcow2" is outside the allowed directories "/srv/images/", "/data/vm". Put the file under one of them, or add its directory to this policy's allowedDirectories config.`,
      'backingFile "base.qcow2" is a relative path. The Image resolves it against the directory the Pulumi program runs in, ' +
        'so the file would land wherever the program happens to run. Use an absolute path under "/srv/images/", "/data/vm".',
    ]);
    expect(await violations(allowedPaths, image({ path: '/anywhere/a.qcow2' }), { allowedDirectories: ['/'] })).toEqual([]);
    expect(await violations(allowedPaths, image({ path: 'rel.qcow2' }), { allowedDirectories: ['/'] })).toHaveLength(1);
  });

  it('checks the known paths and skips the unknown ones', async () => {
    const ms = await violations(allowedPaths, image({ path: UNKNOWN, dataFile: '/tmp/x.raw', backingFile: UNKNOWN }), confined);
    expect(ms).toHaveLength(1);
    expect(ms[0]).toMatch(/^dataFile "\/tmp\/x\.raw" is outside/);
    expect(await violations(allowedPaths, image({ path: UNKNOWN, dataFile: UNKNOWN }))).toEqual([]);
  });
});

describe('qcow2-compat-1.1 (mandatory)', () => {
  it('passes compat 1.1 and an unset compat (the default is 1.1)', async () => {
    expect(await violations(compat11, image({ path: `${IMAGES}/a.qcow2`, size: '20G', compat: '1.1' }))).toEqual([]);
    expect(await violations(compat11, image({ path: `${IMAGES}/a.qcow2`, size: '20G' }))).toEqual([]);
  });

  it('refuses compat 0.10 for a new image', async () => {
    const ms = await violations(compat11, image({ path: `${IMAGES}/a.qcow2`, size: '20G', compat: '0.10' }));
    expect(ms).toHaveLength(1);
    expect(ms[0]).toMatch(/^compat "0\.10" would create a qcow2 version 2 image/);
    expect(ms[0]).toContain('Remove compat (the default is 1.1) or set it to "1.1".');
  });

  it('lets an adopted image keep compat 0.10, and skips unknowns', async () => {
    expect(await violations(compat11, image({ path: `${IMAGES}/old.qcow2`, compat: '0.10', adopt: true }))).toEqual([]);
    expect(await violations(compat11, image({ path: `${IMAGES}/old.qcow2`, compat: '0.10', adopt: UNKNOWN }))).toEqual([]);
    expect(await violations(compat11, image({ path: `${IMAGES}/a.qcow2`, compat: UNKNOWN }))).toEqual([]);
    expect(await violations(compat11, image({ path: `${IMAGES}/a.qcow2`, compat: '0.10', adopt: false }))).toHaveLength(1);
  });
});

describe('qcow2-prefer-data-file-raw (advisory)', () => {
  it('advises data-file-raw for a data file without it', async () => {
    const ms = await violations(preferDataFileRaw, image({ path: `${IMAGES}/a.qcow2`, size: '20G', dataFile: `${IMAGES}/a.raw` }));
    expect(ms).toHaveLength(1);
    expect(ms[0]).toMatch(new RegExp(`^dataFile "${IMAGES}/a\\.raw" is used without dataFileRaw: true\\.`));
    expect(ms[0]).toContain('Set dataFileRaw: true when the image is created (it cannot be set on an existing image).');
    expect(await violations(preferDataFileRaw, image({ path: `${IMAGES}/a.qcow2`, dataFile: `${IMAGES}/a.raw`, dataFileRaw: false }))).toHaveLength(1);
  });

  it('passes data-file-raw, no data file, and a data file with a backing file (raw is impossible there)', async () => {
    expect(await violations(preferDataFileRaw, GOOD)).toEqual([]);
    expect(await violations(preferDataFileRaw, image({ path: `${IMAGES}/a.qcow2`, size: '20G' }))).toEqual([]);
    expect(await violations(preferDataFileRaw, image({
      path: `${IMAGES}/a.qcow2`, dataFile: `${IMAGES}/a.raw`, backingFile: `${IMAGES}/base.qcow2`, backingFormat: 'qcow2',
    }))).toEqual([]);
  });

  it('skips while dataFile, dataFileRaw or backingFile is unknown', async () => {
    const base = { path: `${IMAGES}/a.qcow2`, dataFile: `${IMAGES}/a.raw` };
    expect(await violations(preferDataFileRaw, image({ ...base, dataFile: UNKNOWN }))).toEqual([]);
    expect(await violations(preferDataFileRaw, image({ ...base, dataFileRaw: UNKNOWN }))).toEqual([]);
    expect(await violations(preferDataFileRaw, image({ ...base, backingFile: UNKNOWN }))).toEqual([]);
  });
});

describe('qcow2-max-size (advisory)', () => {
  const at = (size: unknown) => image({ path: `${IMAGES}/a.qcow2`, size });

  it('passes up to the default 2T, advises above it (text and byte sizes)', async () => {
    expect(await violations(maxSize, at('2T'))).toEqual([]);
    expect(await violations(maxSize, at('2048G'))).toEqual([]);
    expect(await violations(maxSize, at(2 ** 41))).toEqual([]);
    expect(await violations(maxSize, at('2.5T'))).toEqual([
      'size "2.5T" (about 2.5 TiB, 2748779069440 bytes) is above the maximum of "2T" (2 TiB). ' +
        "Use a smaller size, or raise this policy's maxSize config if the image is meant to be that large.",
    ]);
    expect(await violations(maxSize, at(2 ** 41 + 512))).toHaveLength(1);
    expect(await violations(maxSize, at('1P'))).toHaveLength(1);
  });

  it('uses the configured maxSize, in bytes or with a suffix', async () => {
    expect(await violations(maxSize, at('20G'), { maxSize: '10G' })).toEqual([
      'size "20G" (20 GiB, 21474836480 bytes) is above the maximum of "10G" (10 GiB). ' +
        "Use a smaller size, or raise this policy's maxSize config if the image is meant to be that large.",
    ]);
    expect(await violations(maxSize, at('10G'), { maxSize: '10G' })).toEqual([]);
    expect(await violations(maxSize, at('10G'), { maxSize: 10 * 2 ** 30 - 1 })).toHaveLength(1);
    expect(await violations(maxSize, at('1E'), { maxSize: '7E' })).toEqual([]);
  });

  it('skips unknown, absent (adopt/source) and malformed sizes (the Image check refuses those)', async () => {
    expect(await violations(maxSize, at(UNKNOWN), { maxSize: '1k' })).toEqual([]);
    expect(await violations(maxSize, image({ path: `${IMAGES}/a.qcow2`, adopt: true }), { maxSize: '1k' })).toEqual([]);
    expect(await violations(maxSize, at('20 GB'), { maxSize: '1k' })).toEqual([]);
    expect(await violations(maxSize, at(-1), { maxSize: '1k' })).toEqual([]);
  });

  it('fails loudly on a maxSize config that is not a size', async () => {
    await expect(violations(maxSize, at('1G'), { maxSize: 'lots' })).rejects.toThrow('config maxSize "lots" is not a size');
  });
});

describe('qcow2-refcount-16 (advisory)', () => {
  it('passes 16 and unset, advises any other width', async () => {
    expect(await violations(refcount16, image({ path: `${IMAGES}/a.qcow2`, refcountBits: 16 }))).toEqual([]);
    expect(await violations(refcount16, image({ path: `${IMAGES}/a.qcow2` }))).toEqual([]);
    for (const bits of [1, 2, 4, 8, 32, 64]) {
      const ms = await violations(refcount16, image({ path: `${IMAGES}/a.qcow2`, refcountBits: bits }));
      expect(ms).toHaveLength(1);
      expect(ms[0]).toMatch(new RegExp(`^refcountBits ${bits} differs from the default 16\\. `));
      expect(ms[0]).toContain('Remove refcountBits or set it to 16.');
    }
  });

  it('skips an unknown width', async () => {
    expect(await violations(refcount16, image({ path: `${IMAGES}/a.qcow2`, refcountBits: UNKNOWN }))).toEqual([]);
  });
});

describe('size parsing', () => {
  it('agrees with the project\'s parseSize on what the Image schema admits', () => {
    const cases = ['0', '512', '1b', '1B', '1k', '64K', '1M', '20G', '20g', '2T', '1P', '7E', '1.5G', '0.5k', '2.25T',
      '1.0', '10.5M', '9223372036854775807', '8E', '123.456G', '0.001k'];
    for (const c of cases) {
      let expected: bigint | undefined;
      try {
        expected = projectParseSize(c);
      } catch {
        expected = undefined;
      }
      expect(parseSize(c), c).toBe(expected);
    }
  });

  it('refuses what is not a size', () => {
    for (const c of ['', 'G', '1.5', '1.5B', '-1', '1 G', '1GB', '0x10', '8E1', '9223372036854775808', '16E']) {
      expect(parseSize(c), c).toBeUndefined();
    }
    expect(parseSize(1.5)).toBeUndefined();
    expect(parseSize(-1)).toBeUndefined();
    expect(parseSize(true)).toBeUndefined();
    expect(parseSize(4096)).toBe(4096n);
  });

  it('describes sizes for messages', () => {
    expect(describeSize(2n ** 41n)).toBe('2 TiB');
    expect(describeSize(3n * 2n ** 39n)).toBe('about 1.5 TiB');
    expect(describeSize(512n)).toBe('512 bytes');
  });
});
