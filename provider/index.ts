// The public surface of pulumi-qcow2: the Image resource, the Engine and the types it speaks,
// the typed errors, the rules (what a change means, before anything is touched) and the input
// schema. Everything else is internal. The synchronous format API (the native engine's
// operations on the calling thread) is the documented subpath `pulumi-qcow2/qcow2`.

// The resource
export { Image } from './resource/image';
export type { BackingImage, BitmapArgs, BitmapOutput, ImageArgs } from './resource/image';
export type { ImageOutputs } from './resource/state';
export { imageInputSchema, imageInputSchemaPath } from './resource/schema';

// The Engine
export { getEngine } from './engines';
export type { EngineOptions } from './engines';
export type {
  Engine, EngineName, CheckResult, MapEntry, ImportSource, ImportOptions, ReadOptions, RebaseOptions, RemoveOptions, ResizeOptions, ProgressFn,
} from './engines/engine';
export type { NativeEngineOptions } from './engines/native/engine';
export type { QemuImgEngineOptions } from './engines/qemuimg/engine';

// The model
export type { ImageFacts, ImageDetail, SnapshotFacts, BitmapFacts } from './model/facts';
export type { CreateOptions, Compat, CompressionType, Preallocation } from './model/options';
export { CREATE_OPTIONS, optionOf, propertyOf } from './model/names';
export type { OptionName, PropertyName, OptionSpec } from './model/names';
export { parseSize, formatSize } from './model/size';

// Errors
export { Qcow2Error } from './model/errors';
export type { Qcow2ErrorCode, Qcow2ErrorDetails } from './model/errors';

// Rules
export { validateCreate, resolveCreate } from './rules/create';
export type { CreateBehaviour, CreateFacts } from './rules/create';
export { validateAmend } from './rules/amend';
export { classifyChange, overallAction, refusalMessage } from './rules/change';
export { classifyChain, deleteRefusal, keepsGuestView } from './rules/chain';
export type { ChainLayer, ChainView, BackingIdentity } from './model/chain';
export type { AmendRequest, DesiredSpec, Change, Refusal, WorldFacts } from './rules/types';
