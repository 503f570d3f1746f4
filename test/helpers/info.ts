// qemu-img's info JSON of an image as this package reads it (the facts, through the model's
// converter): what the differential suites compare with `qemu-img info --output=json`.

import { infoJsonOf, type ImageInfoJson } from '../../provider/model/qemu-json';
import { readImageFacts } from '../../provider/qcow2/ops/info';

export function imageInfo(file: string): ImageInfoJson {
  return infoJsonOf(readImageFacts(file), file);
}
