// The native engine behind the Engine interface: provider/format in this process, no QEMU.

import { checkImageFile, CheckResult } from '../../qcow2/ops/check';
import { imageInfo } from '../../qcow2/ops/info';
import { NodeBlockFile } from '../../qcow2/io/blockfile';
import { lockImage } from '../../qcow2/io/lock';
import type { CreateOptions } from '../../model/options';
import type { AmendRequest } from '../../rules/types';
import { Engine, ImageInfo, RemoveOptions, ResizeOptions, toImageInfo } from '../engine';
import { amendImage, createImage, rebaseUnsafe, resizeImage } from './ops';
import { removeImageFiles } from '../remove';

export class NativeEngine implements Engine {
  readonly name = 'native' as const;

  async create(path: string, options: CreateOptions): Promise<void> {
    createImage(path, options);
  }

  async amend(path: string, request: AmendRequest): Promise<void> {
    amendImage(path, request);
  }

  async resize(path: string, size: bigint, options: ResizeOptions = {}): Promise<void> {
    resizeImage(path, size, { allowShrink: options.allowShrink ?? false });
  }

  async rebase(path: string, backingFile: string, backingFormat?: string): Promise<void> {
    rebaseUnsafe(path, backingFile, backingFormat);
  }

  async info(path: string, options: { forceShare?: boolean } = {}): Promise<ImageInfo> {
    if (!options.forceShare) {
      // Like qemu-img info without -U: refuse an image a VM is writing to.
      const f = NodeBlockFile.open(path, false);
      try {
        lockImage(f.fd, path, 'read').release();
      } finally {
        f.close();
      }
    }
    return toImageInfo(imageInfo(path));
  }

  async check(path: string, options: { forceShare?: boolean } = {}): Promise<CheckResult> {
    return checkImageFile(path, options);
  }

  async remove(path: string, options: RemoveOptions = {}): Promise<void> {
    removeImageFiles(path, options);
  }
}
