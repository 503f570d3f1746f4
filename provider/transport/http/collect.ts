// Dead body chunks collected while a download runs. Each chunk a socket delivers is a new buffer
// of up to 64 KiB outside V8's heap. V8 collects them when its young generation fills with
// JavaScript objects, or when memory outside its heap has grown by its soft limit (64 MiB), and a
// fast download allocates little else: a 478 MiB download from 127.0.0.1 held 27 to 32 MiB of
// dead chunks at its peak (process.memoryUsage().arrayBuffers), and malloc's arenas kept what
// they had grown to. A young-generation collection (a scavenge, over the few objects alive)
// every COLLECT_EVERY bytes frees them as they die: the URL import's peak RSS went from 95-99.5
// to 88.5-91.9 MiB, set by the end of the download or the conversion that follows (2 MiB
// measured the same; 8 MiB 94-96; 16 MiB 108-110, malloc's arenas growing between
// collections), for no measurable CPU.
//
// Node has no API for a collection: the function is the one V8 exposes under --expose-gc, taken
// from a new context after setting that flag at run time (as Jest's leak detector does). Where
// that is refused, downloads go on without it.

import { setFlagsFromString } from 'v8';
import { runInNewContext } from 'vm';

/** Bytes received between two collections. */
export const COLLECT_EVERY = 4 << 20;

type Gc = (options?: { type?: 'minor' | 'major'; execution?: 'sync' | 'async' }) => void;

let gc: Gc | null | undefined;

/** A young-generation collection now, where V8 allows one (else nothing). */
export function collectYoung(): void {
  if (gc === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      gc = runInNewContext('gc') as Gc;
    } catch {
      gc = null;
    }
  }
  gc?.({ type: 'minor' });
}

/** Counts received bytes and collects (`collect`, default collectYoung) every COLLECT_EVERY of them. */
export class ChunkCollector {
  private since = 0;

  constructor(private readonly collect: () => void = collectYoung) {}

  received(bytes: number): void {
    this.since += bytes;
    if (this.since < COLLECT_EVERY) return;
    this.since -= COLLECT_EVERY;
    this.collect();
  }
}
