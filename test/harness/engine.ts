// The closest thing to `pulumi preview` / `up` / `refresh` / `destroy` that runs without the
// Pulumi CLI: an engine inside the test process. It serves the ResourceMonitor and Engine gRPC
// services, runs the program with `node <program>/node_modules/@pulumi/pulumi/cmd/run` from the
// program's folder with the arguments and PULUMI_* variables the nodejs language host passes
// (TypeScript through ts-node, as cmd/run registers it), forwards every dynamic resource to the
// real dynamic-provider host started from the program's folder, asks policy packs (run-policy-pack)
// about every resource, and keeps the stack's state in a JSON file between runs.
//
// The engine's order: Check, then Diff when the resource exists, then Create / Update / Delete;
// replacement creates the new resource before deleting the old one unless the provider or the
// program asks for deleteBeforeReplace; resources the program no longer declares are deleted
// after the program ends, dependents first. Preview is a dry run: Check and Diff only, the
// program sees outputs as unknown. Refresh calls Read for every resource; destroy deletes in
// reverse dependency order. What this does not model is listed in README.md ("Testing").

import { ChildProcess, spawn } from 'child_process';
import { createRequire } from 'module';
import * as fs from 'fs';
import * as path from 'path';
import { startPlugin } from '../helpers/plugin';
import { HostError, ProviderHost, type Props } from '../resource/host';

const root = path.resolve(__dirname, '..', '..');
const sdk = createRequire(createRequire(path.join(root, 'package.json')).resolve('@pulumi/pulumi/package.json'));
const grpc = sdk('@grpc/grpc-js');
const resourceGrpc = sdk('./proto/resource_grpc_pb');
const resourcePb = sdk('./proto/resource_pb');
const engineGrpc = sdk('./proto/engine_grpc_pb');
const analyzerGrpc = sdk('./proto/analyzer_grpc_pb');
const analyzerPb = sdk('./proto/analyzer_pb');
const structPb = sdk('google-protobuf/google/protobuf/struct_pb');
const emptyPb = sdk('google-protobuf/google/protobuf/empty_pb');
const yaml = sdk('js-yaml');

const DYNAMIC = 'pulumi-nodejs:dynamic/';
const STACK_TYPE = 'pulumi:pulumi:Stack';
/** The nodejs language host's exit code for "the program already reported its error". */
const BAIL = 32;

export type Op = 'create' | 'update' | 'replace' | 'same' | 'delete';

/** One resource in the state file, as a Pulumi checkpoint keeps it. */
export interface StateResource {
  urn: string;
  type: string;
  custom: boolean;
  id?: string;
  parent?: string;
  dependencies: string[];
  protect?: boolean;
  inputs: Props;
  outputs: Props;
}

export interface StackState {
  version: 1;
  resources: StateResource[];
}

export interface Diagnostic {
  severity: 'debug' | 'info' | 'warning' | 'error';
  message: string;
  urn?: string;
}

export interface PolicyDiagnostic {
  pack: string;
  policy: string;
  level: 'advisory' | 'mandatory' | 'remediate' | 'disabled';
  message: string;
  urn: string;
}

export interface RunResult {
  /** True when the run succeeded: the program exited cleanly and no step failed. */
  ok: boolean;
  /** What happened (or, in a preview, would happen) to each custom resource, by name. */
  ops: Record<string, Op>;
  /** The stack's outputs (unknown values as the unknown sentinel in a preview). */
  outputs: Props;
  /** Everything the CLI would print: the program's log, resource errors, policy warnings. */
  diagnostics: Diagnostic[];
  policy: PolicyDiagnostic[];
  /** The error diagnostics' messages, in order. */
  errors: string[];
  /** The program's own stdout and stderr. */
  stdout: string;
  stderr: string;
}

export interface ProjectOptions {
  /** The project folder: where Pulumi.yaml is. */
  dir: string;
  /** The state file (created on the first `up`). */
  stateFile: string;
  stack?: string;
  /** Stack configuration, as `pulumi config set` gives it; keys without a namespace are the project's. */
  config?: Record<string, unknown>;
  /** Policy pack folders, as `--policy-pack` names them (each with its dependencies installed), or started packs. */
  policyPacks?: Array<string | PolicyPack>;
  /** Extra environment for the program (e.g. PULUMI_NODEJS_TRANSPILE_ONLY). */
  env?: Record<string, string>;
}

function deepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(sorted(a)) === JSON.stringify(sorted(b));
}
function sorted(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sorted);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sorted((v as Props)[k])]));
  return v;
}

/** A configuration value as the CLI hands it to the program and providers: text, or JSON for structures. */
const configText = (v: unknown) => (typeof v === 'string' ? v : JSON.stringify(v));

/** A Pulumi project on disk and its stack, driven like the CLI drives it. */
export class Project {
  readonly dir: string;
  readonly stack: string;
  readonly name: string;
  private readonly main: string | undefined;
  private readonly runtimeOptions: { typescript?: boolean; tsconfig?: string; nodeargs?: string };

  constructor(readonly opts: ProjectOptions) {
    this.dir = path.resolve(opts.dir);
    this.stack = opts.stack ?? 'dev';
    const project = yaml.load(fs.readFileSync(path.join(this.dir, 'Pulumi.yaml'), 'utf8')) as {
      name: string; main?: string; runtime: string | { name: string; options?: Record<string, unknown> };
    };
    this.name = project.name;
    this.main = project.main;
    const runtime = typeof project.runtime === 'string' ? { name: project.runtime } : project.runtime;
    if (runtime.name !== 'nodejs') throw new Error(`${this.dir}: the harness runs nodejs projects, not ${runtime.name}`);
    this.runtimeOptions = (runtime.options ?? {}) as typeof this.runtimeOptions;
  }

  /** Where the program is: the project folder, or its `main` folder. */
  get programDir(): string {
    if (this.main === undefined) return this.dir;
    const p = path.resolve(this.dir, this.main);
    return fs.statSync(p).isDirectory() ? p : this.dir;
  }

  /** The stack's configuration, namespaced: project defaults, then Pulumi.<stack>.yaml, then `config`. */
  config(): Record<string, string> {
    const out: Record<string, string> = {};
    const key = (k: string) => (k.includes(':') ? k : `${this.name}:${k}`);
    const project = yaml.load(fs.readFileSync(path.join(this.dir, 'Pulumi.yaml'), 'utf8')) as { config?: Record<string, unknown> };
    for (const [k, v] of Object.entries(project.config ?? {})) {
      const value = v && typeof v === 'object' && !Array.isArray(v) && ('default' in v || 'type' in v) ? (v as { default?: unknown }).default : v;
      if (value !== undefined) out[key(k)] = configText(value);
    }
    const stackFile = path.join(this.dir, `Pulumi.${this.stack}.yaml`);
    if (fs.existsSync(stackFile)) {
      const s = yaml.load(fs.readFileSync(stackFile, 'utf8')) as { config?: Record<string, unknown> } | undefined;
      for (const [k, v] of Object.entries(s?.config ?? {})) out[key(k)] = configText(v);
    }
    for (const [k, v] of Object.entries(this.opts.config ?? {})) out[key(k)] = configText(v);
    return out;
  }

  readState(): StackState {
    if (!fs.existsSync(this.opts.stateFile)) return { version: 1, resources: [] };
    return JSON.parse(fs.readFileSync(this.opts.stateFile, 'utf8')) as StackState;
  }

  /** Replace the state file's resources (the engine's checkpoint write). */
  writeState(resources: StateResource[]): void {
    fs.writeFileSync(this.opts.stateFile, `${JSON.stringify({ version: 1, resources } satisfies StackState, null, 2)}\n`);
  }

  preview(): Promise<RunResult> {
    return this.runProgram(true);
  }

  up(): Promise<RunResult> {
    return this.runProgram(false);
  }

  private startHost(engineAddress: string): Promise<ProviderHost> {
    return ProviderHost.start(this.programDir, { installed: true, config: this.config(), engineAddress });
  }

  /** `pulumi refresh`: Read every custom resource; a resource that is gone leaves the state. */
  async refresh(): Promise<RunResult> {
    const run = new Run(this, false);
    const resources = this.readState().resources;
    const host = await this.startHost('127.0.0.1:1');
    try {
      const kept: StateResource[] = [];
      for (const r of resources) {
        if (!r.custom) {
          kept.push(r);
          continue;
        }
        try {
          const read = await host.read(r.urn, r.id!, r.outputs, r.inputs);
          if (!read.id) {
            run.ops[nameOf(r.urn)] = 'delete';
            continue;
          }
          run.ops[nameOf(r.urn)] = deepEqual(read.props, r.outputs) ? 'same' : 'update';
          kept.push({ ...r, id: read.id, outputs: read.props, inputs: read.inputs ?? r.inputs });
        } catch (e) {
          run.error(errorText(e), r.urn);
          kept.push(r);
        }
      }
      this.writeState(kept);
    } finally {
      host.stop();
    }
    return run.result(resources.find((r) => r.type === STACK_TYPE)?.outputs ?? {});
  }

  /** `pulumi destroy`: delete every resource, dependents first. Nothing of the program runs. */
  async destroy(): Promise<RunResult> {
    const run = new Run(this, false);
    const resources = this.readState().resources;
    const host = await this.startHost('127.0.0.1:1');
    try {
      const left = await deleteInOrder(resources, resources, host, run);
      this.writeState(left);
    } finally {
      host.stop();
    }
    return run.result({});
  }

  private async runProgram(dryRun: boolean): Promise<RunResult> {
    const run = new Run(this, dryRun);
    const server = new grpc.Server();
    server.addService(resourceGrpc.ResourceMonitorService, run.monitorService());
    server.addService(engineGrpc.EngineService, run.engineService());
    const port: number = await new Promise((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err: Error | null, p: number) => (err ? reject(err) : resolve(p))));
    const address = `127.0.0.1:${port}`;
    // The provider host and the policy packs start while the program loads; the first
    // registration waits for them.
    const starting = [
      this.startHost(address).then((h) => { run.host = h; }),
      ...(this.opts.policyPacks ?? []).map((pack) => (typeof pack === 'string'
        ? PolicyPack.start(pack, address).then((a) => { run.analyzers.push(a); run.startedPacks.push(a); })
        : pack.configure().then(() => { run.analyzers.push(pack); }))),
    ];
    run.ready = Promise.all(starting).then(() => undefined);
    run.ready.catch(() => undefined);
    try {
      const exit = await this.spawnProgram(address, dryRun, run);
      for (const s of await Promise.allSettled(starting)) {
        if (s.status === 'rejected' && !run.failed) run.error(`could not start a plugin: ${errorText(s.reason)}`);
      }
      if (exit !== 0 && exit !== BAIL) run.error(`Program exited with non-zero exit code: ${exit}`);
      if (exit === BAIL && run.errors().length === 0) run.error('the program reported an error and exited');
      await run.finish();
    } finally {
      await Promise.allSettled(starting);
      run.host?.stop();
      for (const a of run.startedPacks) a.stop();
      server.forceShutdown();
    }
    return run.result(run.stackOutputs);
  }

  /** Run the program as the nodejs language host does (constructArguments, execRuntime). */
  private spawnProgram(address: string, dryRun: boolean, run: Run): Promise<number> {
    const programDir = this.programDir;
    const runPath = require.resolve('@pulumi/pulumi/cmd/run', { paths: [programDir] });
    const args = [
      ...(this.runtimeOptions.nodeargs ?? '').split(' ').filter(Boolean),
      runPath,
      '--monitor', address,
      '--engine', address,
      '--organization', 'organization',
      '--project', this.name,
      '--root-directory', this.dir,
      '--stack', this.stack,
      '--pwd', programDir,
      ...(dryRun ? ['--dry-run'] : []),
      '--parallel', '16',
      '.',
    ];
    const config = Object.fromEntries(Object.entries(this.config()).map(([k, v]) => {
      const i = k.indexOf(':');
      return [`${k.slice(0, i)}:config:${k.slice(i + 1)}`, v];
    }));
    const env: Record<string, string | undefined> = {
      ...process.env,
      PULUMI_CONFIG: JSON.stringify(config),
      PULUMI_CONFIG_SECRET_KEYS: '[]',
      ...(this.runtimeOptions.typescript !== false ? { PULUMI_NODEJS_TYPESCRIPT: 'true' } : {}),
      ...(this.runtimeOptions.tsconfig ? { PULUMI_NODEJS_TSCONFIG_PATH: this.runtimeOptions.tsconfig } : {}),
      ...this.opts.env,
    };
    // What the test runner set for itself must not leak into the program.
    for (const k of ['NODE_OPTIONS', 'NODE_PATH', 'VITEST', 'VITEST_POOL_ID', 'VITEST_WORKER_ID', 'TS_NODE_PROJECT']) delete env[k];
    const child: ChildProcess = spawn(process.execPath, args, { cwd: this.dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.on('data', (d) => { run.stdout += d; });
    child.stderr!.on('data', (d) => { run.stderr += d; });
    return new Promise((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
    });
  }
}

const nameOf = (urn: string) => urn.slice(urn.lastIndexOf('::') + 2);
const errorText = (e: unknown) => (e instanceof HostError ? e.message : String((e as Error)?.message ?? e));

/** Delete `victims` (from `all`), dependents first; returns what is left of `all`. */
async function deleteInOrder(all: StateResource[], victims: StateResource[], host: ProviderHost, run: Run): Promise<StateResource[]> {
  let left = [...all];
  const pending = new Set(victims.map((r) => r.urn));
  while (pending.size) {
    // A resource can go once nothing left depends on it (as a dependency or as its parent).
    const next = left.find((r) => pending.has(r.urn) && !left.some((o) => o.urn !== r.urn && (o.dependencies.includes(r.urn) || o.parent === r.urn)));
    if (!next) throw new Error(`dependency cycle among ${[...pending].join(', ')}`);
    pending.delete(next.urn);
    if (next.protect) {
      run.error(`unable to delete resource "${next.urn}" as it is currently marked for protection`, next.urn);
      return left;
    }
    if (next.custom) {
      try {
        await host.delete(next.urn, next.id!, next.outputs, next.inputs);
      } catch (e) {
        run.error(errorText(e), next.urn);
        return left;
      }
      run.ops[nameOf(next.urn)] = 'delete';
    }
    left = left.filter((r) => r !== next);
  }
  return left;
}

/** One run of the engine: the monitor's and engine's service handlers and what they record. */
class Run {
  host?: ProviderHost;
  /** Settles once the provider host and the policy packs are up. */
  ready: Promise<void> = Promise.resolve();
  readonly analyzers: PolicyPack[] = [];
  /** Packs this run started (and stops). */
  readonly startedPacks: PolicyPack[] = [];
  readonly ops: Record<string, Op> = {};
  readonly diagnostics: Diagnostic[] = [];
  readonly policy: PolicyDiagnostic[] = [];
  stdout = '';
  stderr = '';
  stackOutputs: Props = {};
  failed = false;
  private rootUrn = '';
  private readonly old: Map<string, StateResource>;
  /** The new state, in registration order; old resources not registered are appended at the end. */
  private readonly registered = new Map<string, StateResource>();
  /** Old resources replaced create-before-delete: deleted after the program ends. */
  private readonly replaced: StateResource[] = [];

  constructor(private readonly project: Project, private readonly dryRun: boolean) {
    this.old = new Map(project.readState().resources.map((r) => [r.urn, r]));
  }

  error(message: string, urn?: string): void {
    this.failed = true;
    this.diagnostics.push({ severity: 'error', message, ...(urn ? { urn } : {}) });
  }

  errors(): string[] {
    return this.diagnostics.filter((d) => d.severity === 'error').map((d) => d.message);
  }

  result(outputs: Props): RunResult {
    return { ok: !this.failed, ops: this.ops, outputs, diagnostics: this.diagnostics, policy: this.policy, errors: this.errors(), stdout: this.stdout, stderr: this.stderr };
  }

  private urnOf(type: string, name: string, parent: string): string {
    let qualified = type;
    if (parent) {
      const parentType = parent.split('::')[2]!;
      if (!parentType.endsWith(STACK_TYPE)) qualified = `${parentType}$${type}`;
    }
    return `urn:pulumi:${this.project.stack}::${this.project.name}::${qualified}::${name}`;
  }

  /** The state after this run: registered resources, then old ones still there. */
  private newState(): StateResource[] {
    return [...this.registered.values(), ...[...this.old.values()].filter((r) => !this.registered.has(r.urn))];
  }

  private save(): void {
    if (!this.dryRun) this.project.writeState(this.newState());
  }

  /** After the program: delete replaced resources and those the program no longer declares. */
  async finish(): Promise<void> {
    const orphans = [...this.old.values()].filter((r) => !this.registered.has(r.urn));
    if (this.failed) {
      // The engine deletes nothing the program did not declare when the program or a step failed.
      this.save();
      return;
    }
    if (this.dryRun) {
      for (const r of orphans) if (r.custom) this.ops[nameOf(r.urn)] = 'delete';
      return;
    }
    let state = this.newState();
    // Replaced resources are not in the new state any more; delete them (their dependents are new).
    for (const r of this.replaced) {
      try {
        await this.host!.delete(r.urn, r.id!, r.outputs, r.inputs);
      } catch (e) {
        this.error(errorText(e), r.urn);
      }
    }
    state = await deleteInOrder(state, orphans, this.host!, this);
    this.project.writeState(state);
  }

  monitorService(): Record<string, (call: any, cb: any) => void> {
    return {
      supportsFeature: (_call, cb) => cb(null, new resourcePb.SupportsFeatureResponse().setHassupport(false)),
      registerResource: (call, cb) => {
        this.register(call.request).then((resp) => cb(null, resp), (e: Error & { code?: number }) => cb({ code: e.code ?? grpc.status.UNKNOWN, details: e.message }));
      },
      registerResourceOutputs: (call, cb) => {
        const urn = call.request.getUrn();
        const outputs = call.request.getOutputs()?.toJavaScript() ?? {};
        const r = this.registered.get(urn);
        if (r) r.outputs = outputs;
        if (urn === this.rootUrn) this.stackOutputs = outputs;
        this.save();
        cb(null, new emptyPb.Empty());
      },
      signalAndWaitForShutdown: (_call, cb) => cb(null, new emptyPb.Empty()),
    };
  }

  engineService(): Record<string, (call: any, cb: any) => void> {
    const severities = ['debug', 'info', 'warning', 'error'] as const;
    return {
      log: (call, cb) => {
        const r = call.request;
        const severity = severities[r.getSeverity()] ?? 'info';
        if (severity === 'error') this.failed = true;
        this.diagnostics.push({ severity, message: r.getMessage(), ...(r.getUrn() ? { urn: r.getUrn() } : {}) });
        cb(null, new emptyPb.Empty());
      },
      getRootResource: (_call, cb) => cb(null, new (sdk('./proto/engine_pb').GetRootResourceResponse)().setUrn(this.rootUrn)),
      setRootResource: (call, cb) => {
        this.rootUrn = call.request.getUrn();
        cb(null, new (sdk('./proto/engine_pb').SetRootResourceResponse)());
      },
    };
  }

  /** A step failed: the engine reports it and stops the deployment (the program sees the monitor go away). */
  private stop(message: string, urn: string): Error & { code: number } {
    this.error(message, urn);
    return Object.assign(new Error('resource monitor shut down'), { code: grpc.status.UNAVAILABLE });
  }

  private async register(request: any): Promise<unknown> {
    const type: string = request.getType();
    const name: string = request.getName();
    const parent: string = request.getParent();
    const custom: boolean = request.getCustom();
    const urn = this.urnOf(type, name, parent);
    if (this.failed) throw Object.assign(new Error('resource monitor shut down'), { code: grpc.status.UNAVAILABLE });
    if (this.registered.has(urn)) throw this.stop(`Duplicate resource URN '${urn}'; try giving it a unique name`, urn);
    const inputs: Props = request.getObject()?.toJavaScript() ?? {};
    const dependencies = [...new Set<string>([
      ...request.getDependenciesList(),
      ...[...request.getPropertydependenciesMap().entries()].flatMap(([, d]: [string, any]) => d.getUrnsList() as string[]),
    ])];
    const old = this.old.get(urn);
    const entry = (fields: Partial<StateResource>): StateResource => ({
      urn, type, custom, dependencies, inputs, outputs: {}, ...(parent ? { parent } : {}), ...(request.getProtect() ? { protect: true } : {}), ...fields,
    });
    const response = (id: string, object: Props) =>
      new resourcePb.RegisterResourceResponse().setUrn(urn).setId(id).setObject(structPb.Struct.fromJavaScript(object));

    if (!custom) {
      this.registered.set(urn, entry({ inputs: {}, outputs: old?.outputs ?? {} }));
      return response('', {});
    }
    if (!type.startsWith(DYNAMIC)) throw this.stop(`${type}: the test engine runs dynamic resources only`, urn);
    if (request.getProvider()) throw this.stop(`${name}: explicit providers are not modeled by the test engine`, urn);
    try {
      await this.ready;
    } catch (e) {
      throw this.stop(`could not start a plugin: ${errorText(e)}`, urn);
    }
    const host = this.host!;

    // ignoreChanges: the old value of each named (top-level) input stands in for the new one.
    const news: Props = { ...inputs };
    if (old) {
      for (const k of request.getIgnorechangesList() as string[]) {
        if (k in old.inputs) news[k] = old.inputs[k];
        else delete news[k];
      }
    }
    let checked: Props;
    try {
      const c = await host.check(urn, old?.inputs ?? {}, news);
      if (c.failures.length) throw this.stop(c.failures.map((f) => `${type} resource '${name}': property ${f.property} has a problem: ${f.reason}`).join('\n'), urn);
      checked = c.inputs;
    } catch (e) {
      if ((e as { code?: number }).code === grpc.status.UNAVAILABLE) throw e;
      throw this.stop(errorText(e), urn);
    }
    if (await this.analyze(urn, type, name, checked, request)) {
      throw Object.assign(new Error('resource monitor shut down'), { code: grpc.status.UNAVAILABLE });
    }

    try {
      if (!old) {
        this.ops[name] = 'create';
        if (this.dryRun) {
          this.registered.set(urn, entry({ inputs: checked }));
          return response('', checked);
        }
        const r = await host.create(urn, checked);
        this.registered.set(urn, entry({ id: r.id, inputs: checked, outputs: r.outs }));
        this.save();
        return response(r.id, r.outs);
      }
      const d = await host.diff(urn, old.id!, old.outputs, checked, old.inputs);
      const changed = d.changes === 'unknown' ? !deepEqual(old.inputs, checked) : d.changes === 'some';
      if (changed && d.replaces.length) {
        this.ops[name] = 'replace';
        if (old.protect) throw this.stop(`unable to replace resource "${urn}" as it is currently marked for protection`, urn);
        if (this.dryRun) {
          this.registered.set(urn, entry({ inputs: checked }));
          return response('', checked);
        }
        if (d.deleteBeforeReplace || request.getDeletebeforereplace()) {
          await host.delete(urn, old.id!, old.outputs, old.inputs);
          this.old.delete(urn);
          this.save();
        } else {
          this.replaced.push(old);
        }
        const r = await host.create(urn, checked);
        this.registered.set(urn, entry({ id: r.id, inputs: checked, outputs: r.outs }));
        this.save();
        return response(r.id, r.outs);
      }
      if (changed) {
        this.ops[name] = 'update';
        if (this.dryRun) {
          this.registered.set(urn, entry({ id: old.id, inputs: checked, outputs: old.outputs }));
          return response(old.id!, checked);
        }
        const outs = await host.update(urn, old.id!, old.outputs, checked, old.inputs);
        this.registered.set(urn, entry({ id: old.id, inputs: checked, outputs: outs }));
        this.save();
        return response(old.id!, outs);
      }
      this.ops[name] = 'same';
      this.registered.set(urn, entry({ id: old.id, inputs: checked, outputs: old.outputs }));
      return response(old.id!, old.outputs);
    } catch (e) {
      if ((e as { code?: number }).code === grpc.status.UNAVAILABLE) throw e;
      throw this.stop(errorText(e), urn);
    }
  }

  /** Ask every policy pack about the resource's checked inputs, as the engine does before a step; true if one blocks it. */
  private async analyze(urn: string, type: string, name: string, props: Props, request: any): Promise<boolean> {
    let blocked = false;
    for (const a of this.analyzers) {
      for (const d of await a.analyze(urn, type, name, props, request)) {
        this.policy.push(d);
        const text = `[${d.level}] ${d.pack} ${d.policy}: ${d.message}`;
        if (d.level === 'mandatory') {
          this.error(text, urn);
          blocked = true;
        } else {
          this.diagnostics.push({ severity: 'warning', message: text, urn });
        }
      }
    }
    return blocked;
  }
}

/**
 * A policy pack served by run-policy-pack from its own folder, as `--policy-pack` runs it. The CLI
 * starts it for each run; a test may start one and hand it to several runs (it is stateless
 * between runs, and configured again on each).
 */
export class PolicyPack {
  private constructor(private readonly child: ChildProcess, private readonly client: any, private readonly info: any) {}

  static async start(dir: string, engineAddress = '127.0.0.1:1'): Promise<PolicyPack> {
    const entry = require.resolve('@pulumi/pulumi/cmd/run-policy-pack', { paths: [dir] });
    const env = { ...process.env };
    for (const k of ['NODE_OPTIONS', 'NODE_PATH', 'TS_NODE_PROJECT']) delete env[k];
    const { child, port } = await startPlugin(`run-policy-pack in ${dir}`, [entry, engineAddress, dir], dir, env);
    const client = new analyzerGrpc.AnalyzerClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
    const call = <T>(method: string, request: unknown) => new Promise<T>((resolve, reject) => client[method](request, (err: Error | null, r: T) => (err ? reject(err) : resolve(r))));
    const info: any = await call('getAnalyzerInfo', new emptyPb.Empty());
    const pack = new PolicyPack(child, client, info);
    await pack.configure();
    return pack;
  }

  /** The CLI configures every policy on each run: its level, and its config with the schema's defaults. */
  async configure(): Promise<void> {
    const configure = new analyzerPb.ConfigureAnalyzerRequest();
    for (const p of this.info.getPoliciesList()) {
      const schema = p.getConfigschema()?.getProperties()?.toJavaScript() ?? {};
      const defaults = Object.fromEntries(Object.entries(schema as Record<string, { default?: unknown }>)
        .filter(([, s]) => s.default !== undefined).map(([k, s]) => [k, s.default]));
      configure.getPolicyconfigMap().set(p.getName(), new analyzerPb.PolicyConfig()
        .setEnforcementlevel(p.getEnforcementlevel()).setProperties(structPb.Struct.fromJavaScript(defaults)));
    }
    await new Promise<void>((resolve, reject) => this.client.configure(configure, (err: Error | null) => (err ? reject(err) : resolve())));
  }

  async analyze(urn: string, type: string, name: string, props: Props, request: any): Promise<PolicyDiagnostic[]> {
    const levels = Object.fromEntries(Object.entries(analyzerPb.EnforcementLevel as Record<string, number>).map(([k, v]) => [v, k.toLowerCase()]));
    const options = new analyzerPb.AnalyzerResourceOptions()
      .setProtect(request.getProtect()).setIgnorechangesList(request.getIgnorechangesList())
      .setDeletebeforereplace(request.getDeletebeforereplace()).setParent(request.getParent());
    const provider = new analyzerPb.AnalyzerProviderResource()
      .setType('pulumi:providers:pulumi-nodejs').setName('default')
      .setUrn(urn.replace(/::[^:]+::[^:]+$/, '::pulumi:providers:pulumi-nodejs::default'))
      .setProperties(structPb.Struct.fromJavaScript({}));
    const analyzeRequest = new analyzerPb.AnalyzeRequest().setUrn(urn).setType(type).setName(name)
      .setProperties(structPb.Struct.fromJavaScript(props)).setOptions(options).setProvider(provider);
    const resp: any = await new Promise((resolve, reject) => this.client.analyze(analyzeRequest, (err: Error | null, r: unknown) => (err ? reject(err) : resolve(r))));
    return resp.getDiagnosticsList().map((d: any) => ({
      pack: d.getPolicypackname(), policy: d.getPolicyname(), level: levels[d.getEnforcementlevel()], message: d.getMessage(), urn,
    }));
  }

  stop(): void {
    this.client.close();
    this.child.kill('SIGKILL');
  }
}

