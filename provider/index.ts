// The public surface of pulumi-qcow2. Internals (field tables, allocator model) stay unexported.

export { Qcow2Error } from './model/errors';
export type { Qcow2ErrorCode, Qcow2ErrorDetails } from './model/errors';
export type { CreateOptions, Compat, CompressionType, Preallocation } from './model/options';
export { createImage, amendImage, resizeImage, rebaseUnsafe, rebaseImage, importImage, mapImage, openImageForWrite } from './engines/native/ops';
export type { CreateBehaviour, AmendBehaviour, ImportSource, ImportBehaviour } from './engines/native/ops';
export type { AmendRequest, ImageState, DesiredSpec, Change } from './rules/types';
export { imageInfo, infoHumanText, infoJsonText } from './qcow2/ops/info';
export type { ImageInfoJson, Qcow2SpecificJson } from './qcow2/ops/info';
export { checkImageFile, checkJson, checkHumanText, checkExitCode } from './qcow2/ops/check';
export type { CheckResult, CheckJson } from './qcow2/ops/check';
export { parseSize, formatSize } from './model/size';
export { validateCreate } from './rules/create';
export { Image, imageProvider } from './resource/image';
export type { ImageArgs } from './resource/image';
export { imageInputSchema, imageInputSchemaPath } from './resource/schema';
export { getEngine } from './engines';
export type { Engine, EngineName, ImageInfo } from './engines/engine';
export { classifyChange } from './rules/change';
