// A driver for Pulumi's own dynamic-provider host: start the host process that ships in
// @pulumi/pulumi, serialize the provider from compiled CommonJS (as a Pulumi program does) and
// make the engine's gRPC calls in its order. No Pulumi CLI and no mocks.

import type { ChildProcess } from 'child_process';
import { createRequire } from 'module';
import * as os from 'os';
import * as path from 'path';
import { startPlugin } from '../helpers/plugin';

import * as fs from 'fs';

/** The repository root (this file runs from test/ in vitest and from dist/test/ in benches). */
const root = (() => {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const p = path.join(dir, 'package.json');
    if (fs.existsSync(p) && JSON.parse(fs.readFileSync(p, 'utf8')).name === 'pulumi-qcow2') return dir;
  }
  throw new Error('cannot find the pulumi-qcow2 repository root');
})();
const req = createRequire(path.join(root, 'package.json'));
const grpc = req('@grpc/grpc-js');
const providerGrpc = req('@pulumi/pulumi/proto/provider_grpc_pb');
const providerPb = req('@pulumi/pulumi/proto/provider_pb');
const structPb = req('google-protobuf/google/protobuf/struct_pb');
const pulumi = req('@pulumi/pulumi');

export const UNKNOWN = '04da6b54-80e4-46f7-96ec-b56ff0331ba9';
export type Props = Record<string, unknown>;

/** Serialize the Image provider the way pulumi.dynamic.Resource does (from dist/, CommonJS). */
export async function serializedProvider(): Promise<string> {
  const { imageProvider } = req(path.join(root, 'dist', 'provider', 'resource', 'image.js'));
  const sf = await pulumi.runtime.serializeFunction(() => imageProvider, { allowSecrets: true });
  return sf.text as string;
}

/** The real gRPC error text of a failed call (what `pulumi preview` would print). */
export class HostError extends Error {}

export class ProviderHost {
  private client: any;
  private constructor(private readonly child: ChildProcess, port: number) {
    this.client = new providerGrpc.ResourceProviderClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  }

  /**
   * Start the host with `cwd` as the program directory (relative paths resolve there), as the
   * engine starts `pulumi-resource-pulumi-nodejs`. By default the host is this checkout's
   * @pulumi/pulumi and, since a scratch folder has no node_modules, NODE_PATH points at the
   * checkout's, where scripts/link-self.js links this package for the serialized provider's
   * `require('pulumi-qcow2/dynamic')`. With `installed`, the host and everything it requires
   * resolve from `cwd` only, as in a user's project.
   */
  static async start(cwd: string, opts: { installed?: boolean; config?: Props; engineAddress?: string } = {}): Promise<ProviderHost> {
    const entry = opts.installed
      ? require.resolve('@pulumi/pulumi/cmd/dynamic-provider', { paths: [cwd] })
      : req.resolve('@pulumi/pulumi/cmd/dynamic-provider/index.js');
    const env = opts.installed ? { ...process.env } : { ...process.env, NODE_PATH: path.join(root, 'node_modules') };
    if (opts.installed) delete env.NODE_PATH;
    const nodeArgs = (process.env.QCOW2_HOST_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const { child, port } = await startPlugin('provider host', [...nodeArgs, entry, opts.engineAddress ?? '127.0.0.1:1'], cwd, env);
    const host = new ProviderHost(child, port);
    await host.call('configure', new providerPb.ConfigureRequest().setArgs(structPb.Struct.fromJavaScript(opts.config ?? {}))
      .setAcceptsecrets(true).setAcceptresources(true));
    return host;
  }

  /** CPU seconds the host process has used so far (user + system), from /proc. */
  cpuSeconds(): number {
    const stat = fs.readFileSync(`/proc/${this.child.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  }

  stop(): void {
    this.client.close();
    this.child.kill('SIGKILL');
  }

  private call(method: string, request: unknown): Promise<any> {
    return new Promise((resolve, reject) => {
      this.client[method](request, (err: Error | null, resp: unknown) => (err ? reject(new HostError(err.message.replace(/^\d+ [A-Z_]+: /, ''))) : resolve(resp)));
    });
  }

  async check(urn: string, olds: Props, news: Props): Promise<{ inputs: Props; failures: Array<{ property: string; reason: string }> }> {
    const r = await this.call('check', new providerPb.CheckRequest().setUrn(urn)
      .setOlds(structPb.Struct.fromJavaScript(olds)).setNews(structPb.Struct.fromJavaScript(news)));
    return {
      inputs: r.getInputs().toJavaScript(),
      failures: r.getFailuresList().map((f: any) => ({ property: f.getProperty(), reason: f.getReason() })),
    };
  }

  async diff(urn: string, id: string, olds: Props, news: Props, oldInputs?: Props): Promise<{ changes: 'some' | 'none' | 'unknown'; replaces: string[]; deleteBeforeReplace: boolean }> {
    const request = new providerPb.DiffRequest().setUrn(urn).setId(id)
      .setOlds(structPb.Struct.fromJavaScript(olds)).setNews(structPb.Struct.fromJavaScript(news));
    if (oldInputs) request.setOldInputs(structPb.Struct.fromJavaScript(oldInputs));
    const r = await this.call('diff', request);
    const C = providerPb.DiffResponse.DiffChanges;
    const c = r.getChanges();
    return { changes: c === C.DIFF_SOME ? 'some' : c === C.DIFF_NONE ? 'none' : 'unknown', replaces: r.getReplacesList(), deleteBeforeReplace: r.getDeletebeforereplace() };
  }

  async create(urn: string, props: Props): Promise<{ id: string; outs: Props }> {
    const r = await this.call('create', new providerPb.CreateRequest().setUrn(urn).setProperties(structPb.Struct.fromJavaScript(props)));
    return { id: r.getId(), outs: r.getProperties().toJavaScript() };
  }

  async update(urn: string, id: string, olds: Props, news: Props, oldInputs?: Props): Promise<Props> {
    const request = new providerPb.UpdateRequest().setUrn(urn).setId(id)
      .setOlds(structPb.Struct.fromJavaScript(olds)).setNews(structPb.Struct.fromJavaScript(news));
    if (oldInputs) request.setOldInputs(structPb.Struct.fromJavaScript(oldInputs));
    const r = await this.call('update', request);
    return r.getProperties().toJavaScript();
  }

  async read(urn: string, id: string, props: Props, inputs?: Props): Promise<{ id: string; props: Props; inputs?: Props }> {
    const request = new providerPb.ReadRequest().setUrn(urn).setId(id).setProperties(structPb.Struct.fromJavaScript(props));
    if (inputs) request.setInputs(structPb.Struct.fromJavaScript(inputs));
    const r = await this.call('read', request);
    const newInputs = r.getInputs();
    return { id: r.getId(), props: r.getProperties()?.toJavaScript() ?? {}, ...(newInputs ? { inputs: newInputs.toJavaScript() } : {}) };
  }

  async delete(urn: string, id: string, props: Props, oldInputs?: Props): Promise<void> {
    const request = new providerPb.DeleteRequest().setUrn(urn).setId(id).setProperties(structPb.Struct.fromJavaScript(props));
    if (oldInputs) request.setOldInputs(structPb.Struct.fromJavaScript(oldInputs));
    await this.call('delete', request);
  }
}

/**
 * A host, the serialized provider and a scratch program folder for one describe block: `start`
 * in its beforeAll, `stop` in its afterAll (the folder and what the tests wrote in it go).
 */
export class HostInScratch {
  dir = '';
  host?: ProviderHost;
  provider = '';
  constructor(private readonly prefix: string, private readonly base: () => string = os.tmpdir) {}

  async start(): Promise<{ dir: string; host: ProviderHost; provider: string }> {
    this.dir = fs.mkdtempSync(path.join(this.base(), this.prefix));
    const host = (this.host = await ProviderHost.start(this.dir));
    this.provider = await serializedProvider();
    return { dir: this.dir, host, provider: this.provider };
  }

  stop(): void {
    this.host?.stop();
    if (this.dir) fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The engine's sequence for one resource across `pulumi preview` / `up` runs, with state kept. */
export class Stack {
  state?: { id: string; inputs: Props; outputs: Props };
  constructor(private readonly host: ProviderHost, private readonly provider: string, readonly urn = 'urn:pulumi:test::qcow2::pulumi-nodejs:dynamic/qcow2:Image::img') {}

  private withProvider(p: Props): Props {
    return { ...p, __provider: this.provider };
  }

  /** `pulumi preview`: Check, then Diff when the resource exists. Never Create/Update. */
  async preview(inputs: Props): Promise<{ op: 'create' | 'update' | 'replace' | 'same'; failures: Array<{ property: string; reason: string }> }> {
    const c = await this.host.check(this.urn, this.state?.inputs ?? {}, this.withProvider(inputs));
    if (c.failures.length) return { op: 'same', failures: c.failures };
    if (!this.state) return { op: 'create', failures: [] };
    const d = await this.host.diff(this.urn, this.state.id, this.state.outputs, c.inputs);
    return { op: d.replaces.length ? 'replace' : d.changes === 'none' ? 'same' : 'update', failures: [] };
  }

  /** `pulumi up` for this resource: Check, Diff, then Create / Update (replace: delete + create). */
  async up(inputs: Props): Promise<{ op: 'create' | 'update' | 'replace' | 'same'; outputs: Props }> {
    const c = await this.host.check(this.urn, this.state?.inputs ?? {}, this.withProvider(inputs));
    if (c.failures.length) throw new HostError(c.failures.map((f) => `${f.property}: ${f.reason}`).join('\n'));
    if (!this.state) {
      const r = await this.host.create(this.urn, c.inputs);
      this.state = { id: r.id, inputs: c.inputs, outputs: r.outs };
      return { op: 'create', outputs: r.outs };
    }
    const d = await this.host.diff(this.urn, this.state.id, this.state.outputs, c.inputs);
    if (d.replaces.length) {
      if (d.deleteBeforeReplace) await this.host.delete(this.urn, this.state.id, this.state.outputs);
      const r = await this.host.create(this.urn, c.inputs);
      if (!d.deleteBeforeReplace) await this.host.delete(this.urn, this.state.id, this.state.outputs);
      this.state = { id: r.id, inputs: c.inputs, outputs: r.outs };
      return { op: 'replace', outputs: r.outs };
    }
    if (d.changes === 'none') {
      // A same step still records the new inputs (as the engine does).
      this.state = { ...this.state, inputs: c.inputs };
      return { op: 'same', outputs: this.state.outputs };
    }
    const outs = await this.host.update(this.urn, this.state.id, this.state.outputs, c.inputs);
    this.state = { id: this.state.id, inputs: c.inputs, outputs: outs };
    return { op: 'update', outputs: outs };
  }

  /** `pulumi refresh`: Read with the state's outputs; an empty id drops the resource. */
  async refresh(): Promise<void> {
    if (!this.state) return;
    const r = await this.host.read(this.urn, this.state.id, this.state.outputs);
    if (!r.id) {
      this.state = undefined;
      return;
    }
    this.state = { id: r.id, inputs: r.inputs ? { ...this.state.inputs, ...r.inputs } : this.state.inputs, outputs: r.props };
  }

  /** `pulumi destroy`. */
  async destroy(): Promise<void> {
    if (!this.state) return;
    await this.host.delete(this.urn, this.state.id, this.state.outputs);
    this.state = undefined;
  }
}
