// The connection's credentials never reach the state in plain text: the Image registers its
// `connection` input as a secret and asks for the `connection` output to be one
// (additionalSecretOutputs), which the Pulumi engine encrypts; everything else a create returns
// holds no key material. Checked on the RegisterResource request the Pulumi SDK sends (the mock
// monitor sees exactly what the engine would) and on the outputs Pulumi's real dynamic-provider
// host returns for a create on a real sshd.

import { createRequire } from 'module';
import * as fs from 'fs';
import * as path from 'path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { qemuImgAvailable, requireQemu } from '../helpers/qemu';
import { skipWithoutSshd, startSshd, type Sshd } from '../helpers/sshd';
import { scratchBase } from '../engines/helpers';
import { ProviderHost, Stack, serializedProvider } from './host';

const root = path.resolve(__dirname, '..', '..');
const req = createRequire(path.join(root, 'package.json'));
const SECRET_SIG = '1b47061264138c4ac30d75fd1eb44270';
const SIG_KEY = '4dabf18193072939515e22adb298388d';

/** A value as the engine stores it: every secret replaced by its ciphertext (here a marker). */
function stored(v: unknown, secretKeys: readonly string[] = []): unknown {
  if (Array.isArray(v)) return v.map((x) => stored(x));
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if (o[SIG_KEY] === SECRET_SIG) return '[ciphertext]';
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, secretKeys.includes(k) ? '[ciphertext]' : stored(x)]));
  }
  return v;
}

const skip = skipWithoutSshd('secret-state') || (!qemuImgAvailable() && !requireQemu);

describe.skipIf(skip)('the connection in the state', () => {
  let sshd: Sshd;
  let dir: string;
  let connection: Record<string, unknown>;
  const password = 'correct horse battery staple';

  beforeAll(async () => {
    sshd = await startSshd();
    dir = fs.mkdtempSync(path.join(scratchBase(), 'qcow2-secret-'));
    connection = { ...sshd.connection(), hostKey: sshd.hostKeyLine, password };
  });
  afterAll(async () => {
    await sshd?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  /** Every line of the private key's body, and the password: none may appear in plain text. */
  const secrets = () => [...sshd.clientKey.privateKey.split('\n').slice(1, -2).filter((l) => l.length > 20), password];

  it('is_registered_as_a_secret_input_and_a_secret_output', async () => {
    const pulumi = req('@pulumi/pulumi');
    const captured: Array<{ type: string; object: Record<string, unknown>; secretOutputs: string[] }> = [];
    await pulumi.runtime.setMocks({
      newResource: (a: { name: string; inputs: Record<string, unknown> }) => ({ id: `${a.name}-id`, state: a.inputs }),
      call: (a: { inputs: Record<string, unknown> }) => a.inputs,
    }, 'p', 's', false);
    const monitor = pulumi.runtime.getMonitor();
    const register = monitor.registerResource.bind(monitor);
    monitor.registerResource = (r: any, cb: unknown) => {
      captured.push({ type: r.getType(), object: r.getObject().toJavaScript(), secretOutputs: r.getAdditionalsecretoutputsList() });
      return register(r, cb);
    };
    const { Image } = req(path.join(root, 'dist', 'provider', 'resource', 'image.js'));
    const img = new Image('remote', { path: path.join(dir, 'x.qcow2'), size: '1M', connection });
    await new Promise<void>((resolve) => img.urn.apply(() => resolve()));
    const r = captured.find((c) => c.type === 'pulumi-nodejs:dynamic/qcow2:Image')!;
    expect(r.secretOutputs).toContain('connection');
    expect((r.object.connection as Record<string, unknown>)[SIG_KEY]).toBe(SECRET_SIG);
    const state = JSON.stringify(stored(r.object));
    for (const s of secrets()) expect(state).not.toContain(s);
  });

  it('create_returns_no_key_material_outside_the_secret_output', async () => {
    const host = await ProviderHost.start(dir);
    try {
      const s = new Stack(host, await serializedProvider());
      const { outputs } = await s.up({ path: path.join(dir, 'y.qcow2'), size: '1M', connection });
      expect(outputs.connection).toMatchObject({ host: '127.0.0.1', password }); // kept for refresh and destroy...
      const state = JSON.stringify(stored(outputs, ['connection'])); // ...encrypted by the engine
      for (const x of secrets()) expect(state).not.toContain(x);
      expect(outputs.host).toBe('127.0.0.1');
      await s.destroy();
    } finally {
      host.stop();
    }
  });
});
