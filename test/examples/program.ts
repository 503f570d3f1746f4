// Run a Pulumi program from examples/ as `pulumi preview` / `pulumi up` would, without the
// Pulumi CLI: pulumi.runtime.setMocks hands each dynamic resource (with its serialized
// provider) to our mocks, which forward it to Pulumi's real dynamic-provider host. A second
// run with the same state reproduces Check -> Diff -> Update, and destroy calls Delete.

import { createRequire } from 'module';
import * as path from 'path';
import { ProviderHost, Stack, UNKNOWN } from '../resource/host';

const root = path.resolve(__dirname, '..', '..');
const req = createRequire(path.join(root, 'package.json'));
const pulumi = req('@pulumi/pulumi');
let tsNodeRegistered = false;

export interface ProgramRun {
  outputs: Record<string, unknown>;
  /** What happened to each dynamic resource, by name: create / update / replace / same. */
  ops: Record<string, string>;
}

/** The state of one program's stack across runs: one Stack per dynamic resource. */
export class ProgramState {
  readonly stacks = new Map<string, Stack>();
  readonly order: string[] = [];
  constructor(readonly host: ProviderHost, readonly project: string) {}

  /** `pulumi destroy`: delete in reverse creation order (dependents first). */
  async destroy(): Promise<void> {
    for (const name of [...this.order].reverse()) await this.stacks.get(name)!.destroy();
    this.stacks.clear();
    this.order.length = 0;
  }
}

function awaitOutput(v: unknown): Promise<unknown> {
  if (pulumi.Output.isInstance(v)) {
    const o = v as { isKnown: Promise<boolean>; apply: (f: (x: unknown) => unknown) => unknown };
    // During preview some outputs stay unknown and apply never runs: report them as unknown.
    return o.isKnown.then((known) => known ? new Promise((resolve) => o.apply((x) => { resolve(x); return x; })) : UNKNOWN);
  }
  if (Array.isArray(v)) return Promise.all(v.map(awaitOutput));
  if (v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    return Promise.all(Object.entries(v).map(async ([k, x]) => [k, await awaitOutput(x)] as const)).then(Object.fromEntries);
  }
  return Promise.resolve(v);
}

/** Run the program in `programDir` once, as `pulumi up` (or `pulumi preview` when preview is true). */
export async function runProgram(programDir: string, state: ProgramState, config: Record<string, string>, preview = false): Promise<ProgramRun> {
  if (!tsNodeRegistered) {
    req('ts-node').register({ transpileOnly: true, skipProject: true, compilerOptions: { module: 'commonjs', target: 'es2022', esModuleInterop: true } });
    tsNodeRegistered = true;
  }
  const ops: Record<string, string> = {};
  const failures: string[] = [];
  await pulumi.runtime.setMocks({
    async newResource(args: { type: string; name: string; inputs: Record<string, unknown> }) {
      if (!args.type.startsWith('pulumi-nodejs:dynamic/')) return { id: `${args.name}-id`, state: args.inputs };
      const { __provider, ...inputs } = args.inputs;
      let stack = state.stacks.get(args.name);
      if (!stack) {
        stack = new Stack(state.host, String(__provider), `urn:pulumi:dev::${state.project}::${args.type}::${args.name}`);
        state.stacks.set(args.name, stack);
        state.order.push(args.name);
      }
      try {
        if (preview) {
          const p = await stack.preview(inputs);
          if (p.failures.length) throw new Error(p.failures.map((f) => `${f.property}: ${f.reason}`).join('\n'));
          ops[args.name] = p.op;
          return { id: stack.state?.id ?? '', state: stack.state?.outputs ?? { ...inputs, virtualSize: UNKNOWN } };
        }
        const r = await stack.up(inputs);
        ops[args.name] = r.op;
        return { id: stack.state!.id, state: r.outputs };
      } catch (e) {
        failures.push(`${args.name}: ${(e as Error).message}`);
        throw e;
      }
    },
    call(args: { inputs: Record<string, unknown> }) { return args.inputs; },
  }, state.project, 'dev', preview);
  pulumi.runtime.setAllConfig(Object.fromEntries(Object.entries(config).map(([k, v]) => [`${state.project}:${k}`, v])));
  // A failed registration also rejects the resource's own promises inside the Pulumi runtime;
  // the engine would end the run, we collect the failure and report it once.
  const swallow = (e: unknown) => {
    if (!/failed to register new resource/.test(String((e as Error)?.message ?? e))) throw e;
  };
  process.on('unhandledRejection', swallow);
  try {
    const index = req.resolve(path.join(programDir, 'index.ts'));
    delete req.cache[index];
    const mod = req(index) as Record<string, unknown>;
    const outputs: Record<string, unknown> = {};
    const all = Promise.all(Object.entries(mod).map(async ([k, v]) => { outputs[k] = await awaitOutput(v); }));
    // An output that depends on a failed resource never resolves: stop waiting once one failed.
    await Promise.race([all, new Promise<void>((resolve) => {
      const t = setInterval(() => { if (failures.length) { clearInterval(t); resolve(); } }, 20);
      void all.then(() => clearInterval(t));
    })]);
    // Give registrations that nothing exported a moment to finish, then report failures.
    await new Promise((r) => setTimeout(r, 50));
    if (failures.length) throw new Error(failures.join('\n'));
    return { outputs, ops };
  } finally {
    setTimeout(() => process.off('unhandledRejection', swallow), 200);
  }
}
