// `qemu-img info` output from the image facts: the JSON text (--output=json) and the human text.

import type { ImageFacts } from '../../model/facts';
import { infoJsonOf } from '../../model/qemu-json';
import { formatSize } from '../../model/size';
import { snapshotListText } from './snapshots';

/** JSON text as qemu-img prints it (4-space indent); the virtual size printed exactly. */
export function infoJsonText(f: ImageFacts, filename: string): string {
  const text = JSON.stringify(infoJsonOf(f, filename), null, 4);
  if (f.virtualSize <= BigInt(Number.MAX_SAFE_INTEGER)) return text;
  return text.replace(/^( {4}"virtual-size": )\d+(\.\d+)?(e\+\d+)?/m, `$1${f.virtualSize}`);
}

/** `qemu-img info --backing-chain --output=json`: the list, as qemu-img prints it. */
export function infoChainJsonText(chain: Array<{ facts: ImageFacts; filename: string }>): string {
  const items = chain.map(({ facts, filename }) => infoJsonText(facts, filename).replace(/^/gm, '    '));
  return `[\n${items.join(',\n')}\n]`;
}

/** The human form of `qemu-img info FILE`. */
export function infoHumanText(f: ImageFacts, filename: string): string {
  const info = infoJsonOf(f, filename);
  const lines: string[] = [];
  lines.push(`image: ${filename}`);
  lines.push(`file format: ${f.format ?? 'qcow2'}`);
  lines.push(`virtual size: ${formatSize(f.virtualSize)} (${f.virtualSize} bytes)`);
  lines.push(`disk size: ${formatSize(Number(f.actualSize))}`);
  if (f.format === 'raw') return lines.join('\n') + '\n';
  lines.push(`cluster_size: ${f.clusterSize}`);
  if (f.dirty) lines.push('cleanly shut down: no');
  if (info['backing-filename'] !== undefined) {
    let l = `backing file: ${info['backing-filename']}`;
    if (info['full-backing-filename'] !== info['backing-filename']) l += ` (actual path: ${info['full-backing-filename']})`;
    lines.push(l);
    if (info['backing-filename-format'] !== undefined) lines.push(`backing file format: ${info['backing-filename-format']}`);
  }
  const snapshots = f.detail?.snapshots ?? [];
  if (snapshots.length) lines.push(snapshotListText(snapshots).slice(0, -1));
  lines.push('Format specific information:');
  const d = info['format-specific']!.data;
  const ind = '    ';
  lines.push(`${ind}compat: ${d.compat}`);
  lines.push(`${ind}compression type: ${d['compression-type']}`);
  if (d['lazy-refcounts'] !== undefined) lines.push(`${ind}lazy refcounts: ${d['lazy-refcounts']}`);
  if (d.bitmaps) {
    lines.push(`${ind}bitmaps:`);
    d.bitmaps.forEach((b, i) => {
      lines.push(`${ind}${ind}[${i}]:`);
      lines.push(`${ind}${ind}${ind}flags:`);
      b.flags.forEach((fl, k) => lines.push(`${ind}${ind}${ind}${ind}[${k}]: ${fl}`));
      lines.push(`${ind}${ind}${ind}name: ${b.name}`);
      lines.push(`${ind}${ind}${ind}granularity: ${b.granularity}`);
    });
  }
  lines.push(`${ind}refcount bits: ${d['refcount-bits']}`);
  if (d['data-file'] !== undefined) lines.push(`${ind}data file: ${d['data-file']}`);
  if (d['data-file-raw'] !== undefined) lines.push(`${ind}data file raw: ${d['data-file-raw']}`);
  if (d.corrupt !== undefined) lines.push(`${ind}corrupt: ${d.corrupt}`);
  if (d['extended-l2'] !== undefined) lines.push(`${ind}extended l2: ${d['extended-l2']}`);
  return lines.join('\n') + '\n';
}
