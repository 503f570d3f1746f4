// The public surface of pulumi-qcow2. Internals (field tables, allocator model) stay unexported.

export { Qcow2Error } from './format/errors';
export type { Qcow2ErrorCode, Qcow2ErrorDetails } from './format/errors';
export type { CreateOptions, Compat, CompressionType, Preallocation } from './format/options';
export { createImage, amendImage, resizeImage, rebaseUnsafe, rebaseImage, importImage, mapImage, openImageForWrite } from './engines/native';
export type { CreateBehaviour, AmendBehaviour, ImportSource, ImportBehaviour } from './engines/native';
export type { AmendRequest, ImageState, DesiredSpec, Change } from './rules/types';
export { imageInfo, infoHumanText, infoJsonText } from './format/info';
export type { ImageInfoJson, Qcow2SpecificJson } from './format/info';
export { checkImageFile, checkJson, checkHumanText, checkExitCode } from './format/check';
export type { CheckResult, CheckJson } from './format/check';
export { parseSize, formatSize } from './format/size';
export { validateCreate } from './rules/create';
export { Image, imageProvider } from './resource/image';
export type { ImageArgs } from './resource/image';
export { imageInputSchema, imageInputSchemaPath } from './resource/schema';
export { getEngine } from './engines';
export type { Engine, EngineName, ImageInfo } from './engines/engine';
export { classifyChange } from './rules/change';
