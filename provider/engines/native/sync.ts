// `pulumi-qcow2/qcow2`: the synchronous API. The native engine's operations run on the calling
// thread, validated by provider/rules exactly as through the Engine; for scripts and tools that
// want no event loop in between. A program that must stay responsive uses getEngine('native').

export { createImage, importImage, amendImage, resizeImage, rebaseUnsafe, rebaseImage, mapImage, openImageForWrite } from './ops';
export type { AmendBehaviour, ImportBehaviour } from './ops';
export { readImageFacts } from '../../qcow2/ops/info';
export { checkImageFile } from '../../qcow2/ops/check';
export type { CheckResult } from '../../qcow2/ops/check';
export type { MapEntry } from '../../qcow2/ops/map';
export type { CreateBehaviour } from '../../rules/create';
export type { ImportSource } from '../engine';
export type { ImageFacts } from '../../model/facts';
export { Qcow2Error } from '../../model/errors';
