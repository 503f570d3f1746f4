// The whole qcow2 policy pack as a user sets it up and the Pulumi CLI runs it: copied out of the
// installed package (node_modules/pulumi-qcow2/policy, from the packed tarball) with its own
// `npm install`, then `node run-policy-pack <engine-addr> <packDir>` with the pack directory as
// cwd. run-policy-pack registers ts-node (type-checking index.ts with the pack's tsconfig.json),
// requires the directory (no "main": index.ts), and the PolicyPack serves pulumirpc.Analyzer on
// 127.0.0.1 and prints its port on stdout. The engine address is never used. Then the engine's
// calls: GetAnalyzerInfo, Configure, Analyze.

import type { ChildProcess } from 'child_process';
import { createRequire } from 'module';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { HANG_MS, policyInstall } from '../harness/install';
import { startPlugin } from '../helpers/plugin';

const root = path.resolve(__dirname, '..', '..');
let packDir: string;
const req = createRequire(path.join(root, 'package.json'));
// Resolve the protobuf runtime from @pulumi/pulumi, so the message classes are the ones it checks against.
const pulumiReq = createRequire(req.resolve('@pulumi/pulumi/package.json'));
const grpc = pulumiReq('@grpc/grpc-js');
const analyzerGrpc = pulumiReq('./proto/analyzer_grpc_pb');
const analyzerPb = pulumiReq('./proto/analyzer_pb');
const structPb = pulumiReq('google-protobuf/google/protobuf/struct_pb');
const emptyPb = pulumiReq('google-protobuf/google/protobuf/empty_pb');

const IMAGE_TYPE = 'pulumi-nodejs:dynamic/qcow2:Image';
const UNKNOWN = '04da6b54-80e4-46f7-96ec-b56ff0331ba9';
const IMAGES = '/var/lib/libvirt/images';
const PROVIDER = '__f0 = function () { return require("pulumi-qcow2/dynamic"); };';
const Level = analyzerPb.EnforcementLevel as Record<'ADVISORY' | 'MANDATORY' | 'DISABLED' | 'REMEDIATE', number>;
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const levelName = (n: number) => Object.entries(Level).find(([, v]) => v === n)![0].toLowerCase();

interface Diagnostic {
  policy: string;
  pack: string;
  version: string;
  level: string;
  description: string;
  message: string;
}

let child: ChildProcess | undefined;
let client: any;
let stderr: () => string = () => '';

function call<T = any>(method: string, request: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    client[method](request, (err: Error | null, resp: T) => (err ? reject(err) : resolve(resp)));
  });
}

/** Analyze one Image the way the engine does before registering it. */
async function analyze(props: Record<string, unknown>, type = IMAGE_TYPE, name = 'disk') {
  const urn = `urn:pulumi:dev::vms::${type}::${name}`;
  const provider = new analyzerPb.AnalyzerProviderResource()
    .setType('pulumi:providers:pulumi-nodejs')
    .setUrn('urn:pulumi:dev::vms::pulumi:providers:pulumi-nodejs::default')
    .setName('default')
    .setProperties(structPb.Struct.fromJavaScript({}));
  const request = new analyzerPb.AnalyzeRequest()
    .setType(type)
    .setUrn(urn)
    .setName(name)
    .setProperties(structPb.Struct.fromJavaScript({ __provider: PROVIDER, ...props }))
    // Required: without options the analyzer fails every policy ("A more recent version of the Pulumi CLI is required").
    .setOptions(new analyzerPb.AnalyzerResourceOptions())
    .setProvider(provider);
  const resp = await call('analyze', request);
  const diagnostics: Diagnostic[] = resp.getDiagnosticsList().map((d: any) => ({
    policy: d.getPolicyname(),
    pack: d.getPolicypackname(),
    version: d.getPolicypackversion(),
    level: levelName(d.getEnforcementlevel()),
    description: d.getDescription(),
    message: d.getMessage(),
  }));
  const notApplicable: Array<[string, string]> = resp.getNotApplicableList().map((n: any) => [n.getPolicyName(), n.getReason()]);
  return { diagnostics, notApplicable };
}

beforeAll(async () => {
  packDir = await policyInstall();
  const entry = require.resolve('@pulumi/pulumi/cmd/run-policy-pack', { paths: [packDir] });
  const plugin = await startPlugin('run-policy-pack', [entry, '127.0.0.1:1', packDir], packDir);
  child = plugin.child;
  stderr = plugin.stderr;
  const port = plugin.port;
  client = new analyzerGrpc.AnalyzerClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}, HANG_MS);

afterAll(() => {
  client?.close();
  child?.kill('SIGKILL');
});

describe('the qcow2 policy pack served by run-policy-pack', () => {
  it('describes itself: name, version from policy/package.json, policies, levels and config schemas', async () => {
    const info = await call('getAnalyzerInfo', new emptyPb.Empty());
    expect(info.getName()).toBe('qcow2');
    expect(info.getVersion()).toBe(req(path.join(packDir, 'package.json')).version);
    expect(info.getSupportsconfig()).toBe(true);
    const policies = info.getPoliciesList().map((p: any) => ({
      name: p.getName(),
      level: levelName(p.getEnforcementlevel()),
      config: p.getConfigschema()?.getProperties()?.toJavaScript(),
    }));
    expect(policies.map((p: any) => [p.name, p.level])).toEqual([
      ['qcow2-no-backing-on-raw', 'mandatory'],
      ['qcow2-allowed-paths', 'mandatory'],
      ['qcow2-compat-1.1', 'mandatory'],
      ['qcow2-prefer-data-file-raw', 'advisory'],
      ['qcow2-max-size', 'advisory'],
      ['qcow2-refcount-16', 'advisory'],
    ]);
    const schema = Object.fromEntries(policies.filter((p: any) => p.config).map((p: any) => [p.name, p.config]));
    expect(Object.keys(schema)).toEqual(['qcow2-allowed-paths', 'qcow2-max-size']);
    expect(schema['qcow2-allowed-paths'].allowedDirectories).toMatchObject({ type: 'array', items: { type: 'string' }, default: ['/'] });
    expect(schema['qcow2-max-size'].maxSize).toMatchObject({ type: ['integer', 'string'], default: '2T' });
  });

  it('passes a compliant image: no diagnostics', async () => {
    const { diagnostics, notApplicable } = await analyze({
      path: `${IMAGES}/vm1.qcow2`, size: '20G', dataFile: `${IMAGES}/vm1.raw`, dataFileRaw: true, compat: '1.1', refcountBits: 16,
    });
    expect(diagnostics).toEqual([]);
    expect(notApplicable).toEqual([]);
  });

  it('reports a mandatory and an advisory violation with policy names, levels and messages', async () => {
    const { diagnostics } = await analyze({
      path: `${IMAGES}/vm1.qcow2`,
      size: '20G',
      dataFile: `${IMAGES}/vm1.raw`,
      dataFileRaw: true,
      backingFile: `${IMAGES}/base.qcow2`,
      backingFormat: 'qcow2',
      refcountBits: 64,
    });
    expect(diagnostics.map((d) => [d.policy, d.level])).toEqual([
      ['qcow2-no-backing-on-raw', 'mandatory'],
      ['qcow2-refcount-16', 'advisory'],
    ]);
    for (const d of diagnostics) {
      expect(d.pack).toBe('qcow2');
      expect(d.version).toBe('0.1.0');
    }
    // The analyzer prefixes the policy's description to the reported message.
    const [raw, refcount] = diagnostics;
    expect(raw!.description).toBe('A data-file-raw image (dataFileRaw: true) cannot have a backing file.');
    expect(raw!.message).toMatch(/^A data-file-raw image \(dataFileRaw: true\) cannot have a backing file\.\nbackingFile "\/var\/lib\/libvirt\/images\/base\.qcow2" is set on an image with dataFileRaw: true\./);
    expect(raw!.message).toContain('data-file-raw keeps the data file a complete raw image');
    expect(raw!.message).toContain('Clear dataFileRaw first');
    expect(refcount!.message).toBe(
      'Images should keep the default refcount width of 16 bits.\nrefcountBits 64 differs from the default 16. ' +
        'Narrower refcounts limit how often a cluster can be shared (1 bit allows no internal snapshots), wider ones make ' +
        'the refcount tables larger for nothing, and tools and qcow2 version 2 expect 16. Remove refcountBits or set it to 16.',
    );
  });

  it('reports every violated policy of a bad image', async () => {
    const { diagnostics } = await analyze({ path: 'vm.qcow2', size: '3T', compat: '0.10', dataFile: 'vm.raw', refcountBits: 8 });
    const expected: Array<[string, string, string]> = [
      ['qcow2-allowed-paths', 'mandatory', 'path "vm.qcow2" is a relative path.'],
      ['qcow2-allowed-paths', 'mandatory', 'dataFile "vm.raw" is a relative path.'],
      ['qcow2-compat-1.1', 'mandatory', 'compat "0.10" would create a qcow2 version 2 image'],
      ['qcow2-prefer-data-file-raw', 'advisory', 'dataFile "vm.raw" is used without dataFileRaw: true.'],
      ['qcow2-max-size', 'advisory', 'size "3T" (3 TiB, 3298534883328 bytes) is above the maximum of "2T" (2 TiB).'],
      ['qcow2-refcount-16', 'advisory', 'refcountBits 8 differs from the default 16.'],
    ];
    expect(diagnostics.map((d) => [d.policy, d.level])).toEqual(expected.map(([p, l]) => [p, l]));
    diagnostics.forEach((d, i) => expect(d.message.split('\n')[1]).toMatch(new RegExp(`^${escape(expected[i]![2])}`)));
  });

  it('skips unknown values during preview instead of reporting "can\'t run policy during preview"', async () => {
    const { diagnostics } = await analyze({
      path: UNKNOWN, size: UNKNOWN, dataFile: UNKNOWN, dataFileRaw: UNKNOWN, backingFile: UNKNOWN, compat: UNKNOWN, refcountBits: UNKNOWN,
    });
    expect(diagnostics).toEqual([]);
    // Known inputs are still judged while others are unknown.
    const partial = await analyze({ path: UNKNOWN, dataFile: 'disk.raw', dataFileRaw: UNKNOWN, size: '8T' });
    expect(partial.diagnostics.map((d) => [d.policy, d.level])).toEqual([
      ['qcow2-allowed-paths', 'mandatory'],
      ['qcow2-max-size', 'advisory'],
    ]);
  });

  it('does not apply to other resource types', async () => {
    const { diagnostics, notApplicable } = await analyze({ path: 'x', compat: '0.10' }, 'pulumi-nodejs:dynamic:Resource');
    expect(diagnostics).toEqual([]);
    expect(notApplicable.map(([n]) => n)).toHaveLength(6);
    expect(notApplicable[0]).toEqual(['qcow2-no-backing-on-raw', `Policy only applies to resources of type '${IMAGE_TYPE}'`]);
  });

  it('takes policy config from Configure (as --policy-pack-config does)', async () => {
    // Properties must be set even when empty (the engine always sends them): the analyzer reads them unchecked.
    const config = (level: number, properties: object = {}) =>
      new analyzerPb.PolicyConfig().setEnforcementlevel(level).setProperties(structPb.Struct.fromJavaScript(properties));
    const request = new analyzerPb.ConfigureAnalyzerRequest();
    const map = request.getPolicyconfigMap();
    // The engine always sends each policy's level; an unset level would mean ADVISORY (0).
    map.set('qcow2-allowed-paths', config(Level.MANDATORY, { allowedDirectories: ['/srv/images'] }));
    map.set('qcow2-max-size', config(Level.MANDATORY, { maxSize: '10G' }));
    map.set('qcow2-refcount-16', config(Level.DISABLED));
    await call('configure', request);

    const { diagnostics } = await analyze({ path: `${IMAGES}/vm1.qcow2`, size: '20G', refcountBits: 8 });
    expect(diagnostics.map((d) => [d.policy, d.level, d.message.split('\n')[1]])).toEqual([
      ['qcow2-allowed-paths', 'mandatory',
        `path "${IMAGES}/vm1.qcow2" is outside the allowed directories "/srv/images". Put the file under one of them, or add its directory to this policy's allowedDirectories config.`],
      ['qcow2-max-size', 'mandatory',
        'size "20G" (20 GiB, 21474836480 bytes) is above the maximum of "10G" (10 GiB). Use a smaller size, or raise this policy\'s maxSize config if the image is meant to be that large.'],
    ]);
    expect((await analyze({ path: '/srv/images/vm1.qcow2', size: '10G' })).diagnostics).toEqual([]);
  });

  it('kept stderr free of errors', () => {
    expect(stderr()).not.toMatch(/error/i);
  });
});
