// The Image input schema (shipped as schema/image.schema.json) and its ajv validator. Values
// Pulumi does not know yet during preview arrive as the unknown sentinel and always pass.

import Ajv, { ErrorObject } from 'ajv';
import { findPackageFile, readPackageFile } from './package-files';

/** Where the shipped schema file is: the package root, above provider/ (source) or dist/provider/ (built). */
export const imageInputSchemaPath: string = (() => {
  const p = findPackageFile('schema/image.schema.json');
  if (p === undefined) throw new Error('schema/image.schema.json is missing from the pulumi-qcow2 package');
  return p;
})();

/** The JSON Schema of the Image inputs, as shipped in the package. */
export const imageInputSchema: Record<string, unknown> = JSON.parse(readPackageFile(imageInputSchemaPath));

/** What Pulumi puts where a value is not known yet (preview), at any depth. */
export const UNKNOWN = '04da6b54-80e4-46f7-96ec-b56ff0331ba9';

export interface InputFailure { property: string; reason: string }

let validator: ReturnType<Ajv['compile']> | undefined;

function stripUnknown(v: unknown): unknown {
  if (Array.isArray(v)) return v.filter((x) => x !== UNKNOWN).map(stripUnknown);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== UNKNOWN && !k.startsWith('__')) out[k] = stripUnknown(x);
    return out;
  }
  return v;
}

function describe(e: ErrorObject, schema: Record<string, unknown>): InputFailure {
  const props = (schema.properties ?? {}) as Record<string, { description?: string; enum?: unknown[] }>;
  const name = e.instancePath.replace(/^\//, '').split('/')[0] || (e.params as { missingProperty?: string; additionalProperty?: string }).missingProperty
    || (e.params as { additionalProperty?: string }).additionalProperty || '';
  const p = props[name];
  if (e.keyword === 'additionalProperties') {
    return { property: name, reason: `'${name}' is not an Image input; allowed inputs: ${Object.keys(props).join(', ')}` };
  }
  if (e.keyword === 'required') return { property: name, reason: `'${name}' is required: ${p?.description ?? ''}`.trim() };
  const nested = e.instancePath.replace(/^\//, '').split('/');
  if (nested.length > 1) {
    // A setting inside an object input (connection.port): named by its path.
    const where = nested.join('.');
    return { property: where, reason: `${where} ${e.message ?? 'is invalid'}` };
  }
  const allowed = p?.enum ? `one of ${p.enum.map((x) => JSON.stringify(x)).join(', ')}` : p?.description ?? e.message ?? 'invalid';
  return { property: name, reason: `${name} ${e.message ?? 'is invalid'}: allowed is ${allowed}` };
}

/** One failure per bad property (the first problem found for it). */
export function validateInputs(inputs: Record<string, unknown>): InputFailure[] {
  if (!validator) validator = new Ajv({ allErrors: true, strict: false }).compile(imageInputSchema);
  const data = stripUnknown(inputs);
  if (validator(data)) return [];
  // A property whose value is not known yet is present: it cannot be "missing".
  const unknown = new Set(Object.entries(inputs).filter(([, v]) => v === UNKNOWN).map(([k]) => k));
  const errors = (validator.errors ?? []).filter((e) =>
    !(e.keyword === 'required' && unknown.has((e.params as { missingProperty?: string }).missingProperty ?? '')));
  if (errors.length === 0) return [];
  const seen = new Map<string, InputFailure>();
  for (const e of errors) {
    if (e.keyword === 'oneOf') continue; // its branches say more
    const f = describe(e, imageInputSchema);
    if (!seen.has(f.property)) seen.set(f.property, f);
  }
  if (seen.size === 0) {
    for (const e of errors) {
      const f = describe(e, imageInputSchema);
      if (!seen.has(f.property)) seen.set(f.property, f);
    }
  }
  return [...seen.values()];
}
