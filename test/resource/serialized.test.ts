// What Pulumi's closure serializer stores as an Image's `__provider` (serializeFunction, as
// pulumi.dynamic.Resource calls it): a shim whose every method requires the implementation by
// package name. The dynamic-provider host evaluates it with require-from-string, so `require`
// resolves from the host's folder (the program's): no path of this machine is captured.

import * as path from 'path';
import { describe, expect, it } from 'vitest';
import { serializedProvider } from './host';

const root = path.resolve(__dirname, '../..');

describe('the serialized provider', () => {
  it('requires_pulumi_qcow2_dynamic_in_every_method_and_captures_nothing_else', async () => {
    const text = await serializedProvider();
    expect(text).toMatch(/^exports\.handler = __f0;/);
    expect(text).toMatch(/var __imageProvider = \{check: __f\d+, diff: __f\d+, create: __f\d+, read: __f\d+, update: __f\d+, delete: __f\d+\};/);
    // Each method captures one value: the specifier (Pulumi's `with` block lists what a function captured).
    const captures = [...text.matchAll(/with\(\{ ([^}]*) \}\)/g)].map((m) => m[1]!.replace(/, this: undefined, arguments: undefined$/, ''));
    expect(captures).toEqual([...Array(6).fill('IMPLEMENTATION: "pulumi-qcow2/dynamic"'), 'imageProvider: __imageProvider']);
    for (const method of ['check', 'diff', 'create', 'read', 'update', 'remove']) expect(text).toContain(`require(IMPLEMENTATION).${method}(`);
    expect(text).not.toContain(root);
    expect(text).not.toMatch(/["'`]\/(work|tmp|home|root|usr|var)\b/);
    expect(text.length).toBeLessThan(3000);
  });
});
