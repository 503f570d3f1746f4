// Images declared in stack configuration (Pulumi.<stack>.yaml), validated against the JSON
// Schema that ships with pulumi-qcow2 before anything is planned, and checked by the policy
// pack in ../../policy on every preview:
//
//   pulumi preview --policy-pack ../../policy
//
// A stack file in a GitOps repository can be checked in CI with the same schema file
// (node_modules/pulumi-qcow2/schema/image.schema.json) and any JSON Schema validator.

import Ajv from 'ajv';
import * as pulumi from '@pulumi/pulumi';
import { Image, ImageArgs, imageInputSchema } from 'pulumi-qcow2';

const config = new pulumi.Config();
const declared = config.requireObject<Record<string, ImageArgs>>('images');

const validate = new Ajv({ allErrors: true, strict: false }).compile(imageInputSchema);
const problems = Object.entries(declared).flatMap(([name, args]) =>
  validate(args) ? [] : (validate.errors ?? []).map((e) => `images.${name}${e.instancePath.replace(/\//g, '.')}: ${e.message}`));
if (problems.length) throw new Error(`stack configuration does not match the Image schema:\n${problems.join('\n')}`);

export const images = Object.fromEntries(Object.entries(declared).map(([name, args]) => {
  const img = new Image(name, args);
  return [name, { path: img.path, virtualSize: img.virtualSize, dataFileRaw: img.dataFileRaw }];
}));
