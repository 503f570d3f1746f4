// QEMU's monitor protocol: talk to the QEMU process that holds an image (a running VM, a storage
// daemon) to change the image live, and name the process that holds an image's locks.

export type { ExecuteOptions, QmpEvent, QmpGreeting, QmpOptions } from './client';
export { isQmpError, QmpClient, QmpError } from './client';
export type { QmpObject, QmpValue } from './json';
export { encodeJson, parseJson } from './json';
export type { AddBitmapOptions, BitmapRef, BlockDevice, BlockNode, DirtyBitmapInfo, FileIdentity, FindNodeOptions, Identify } from './block';
export {
  addBitmap,
  blockResize,
  clearBitmap,
  disableBitmap,
  enableBitmap,
  findNodeByImage,
  identifyLocal,
  imageFileName,
  mergeBitmaps,
  queryBlock,
  queryDirtyBitmaps,
  queryNamedBlockNodes,
  removeBitmap,
} from './block';
export type { ImageHolder } from './holder';
export { describeHolder, imageHolders } from './holder';
