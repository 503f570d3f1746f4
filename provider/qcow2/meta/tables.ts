// The metadata table cache (QEMU's qcow2-cache.c): L2 tables and refcount blocks, one cluster
// each, read on first use, changed in memory, and written back by their owner in its stated
// order (writeBack). Clean tables beyond the budget are evicted least recently used and their
// buffers reused, so a scan of a 4 TiB image holds a few MiB, not every table it passed.
// Dirty tables stay until written.
//
// Copy-on-write: copy() puts a table's contents at a new cluster and leaves the old one as it
// is on disk; the data path does this to a table it shares with a snapshot. clone() gives a
// copy whose cluster its owner picks later: amend changes every table that way, so the old
// image stays whole until its header commit, and places the copies once its plan is known.
//
// A table from get() is valid until the next get/create/copy on the same cache, unless it is
// dirty (dirty tables are never evicted): callers read what they need and let go.

import { BlockFile } from '../io/blockfile';
import { tableView } from '../spec/l2';

/** A cached table: its bytes, and the view its entries are read through (both reused on eviction). */
export interface Table { readonly buf: Buffer; readonly view: DataView }

interface Entry { table: Table; dirty: boolean }

/** Tables worth of memory a cache keeps clean, whatever the cluster size (at least a few tables). */
const DEFAULT_BUDGET = 8 << 20;

export class TableCache {
  private readonly tables = new Map<number, Entry>();
  private readonly capacity: number;
  private lastOffset = -1;
  private last: Entry | undefined;

  /**
   * `file` holds the tables (null: a new image, where every table is created here and an
   * unknown one reads as zeros); `tableSize` is the cluster size.
   */
  constructor(private readonly file: BlockFile | null, readonly tableSize: number, budget = DEFAULT_BUDGET) {
    this.capacity = Math.max(4, Math.floor(budget / tableSize));
  }

  /** The table at `offset`, read on first use. */
  get(offset: number): Table {
    if (offset === this.lastOffset) return this.last!.table;
    let e = this.tables.get(offset);
    if (e === undefined) {
      const table = this.buffer(offset);
      if (this.file) this.file.readInto(table.buf, offset); else table.buf.fill(0);
      e = { table, dirty: false };
    } else {
      this.tables.delete(offset); // most recently used goes last
    }
    this.tables.set(offset, e);
    this.lastOffset = offset;
    this.last = e;
    return e.table;
  }

  /** A new all-zero table at `offset` (a cluster just allocated), dirty. */
  create(offset: number): Table {
    const table = this.buffer(offset);
    table.buf.fill(0);
    this.put(offset, table);
    return table;
  }

  /** Copy-on-write: the table at `from`, copied to the new cluster `to` (dirty); `from` stays as it is. */
  copy(from: number, to: number): Table {
    const src = this.get(from);
    const table = this.buffer(to, from);
    table.buf.set(src.buf);
    this.put(to, table);
    return table;
  }

  /** A private copy of the table at `from` (all zeros for null), outside the cache: its owner writes it. */
  clone(from: number | null): Table {
    const buf = from === null ? Buffer.alloc(this.tableSize) : Buffer.from(this.get(from).buf);
    return { buf, view: tableView(buf) };
  }

  /** Record that the table at `offset` (in the cache) changed. */
  markDirty(offset: number): void {
    const e = this.tables.get(offset);
    if (e === undefined) throw new Error(`internal: table 0x${offset.toString(16)} is not cached`);
    e.dirty = true;
  }

  isDirty(offset: number): boolean {
    return this.tables.get(offset)?.dirty ?? false;
  }

  /** Number of tables waiting to be written. */
  get dirtyCount(): number {
    let n = 0;
    for (const e of this.tables.values()) if (e.dirty) n++;
    return n;
  }

  /** Offsets of the dirty tables, ascending. */
  dirtyOffsets(): number[] {
    const out: number[] = [];
    for (const [off, e] of this.tables) if (e.dirty) out.push(off);
    return out.sort((a, b) => a - b);
  }

  /** Hand every dirty table to `write` in offset order, then mark it clean. Returns how many. */
  writeBack(write: (offset: number, table: Buffer) => void): number {
    const list = this.dirtyOffsets();
    for (const off of list) {
      const e = this.tables.get(off)!;
      write(off, e.table.buf);
      e.dirty = false;
    }
    this.trim();
    return list.length;
  }

  /** Forget a table (its cluster was freed): nothing of it is written. */
  forget(offset: number): void {
    this.tables.delete(offset);
    if (offset === this.lastOffset) this.lastOffset = -1;
  }

  private put(offset: number, table: Table): void {
    const e = { table, dirty: true };
    this.tables.delete(offset);
    this.tables.set(offset, e);
    this.lastOffset = offset;
    this.last = e;
  }

  /** Room for a table about to enter: the least recently used clean table's, when full. */
  private buffer(offset: number, keep = -1): Table {
    this.lastOffset = -1;
    if (this.tables.size >= this.capacity) {
      for (const [off, e] of this.tables) {
        if (e.dirty || off === keep || off === offset) continue;
        this.tables.delete(off);
        return e.table;
      }
    }
    const buf = Buffer.allocUnsafe(this.tableSize);
    return { buf, view: tableView(buf) };
  }

  /** Back within the budget after a write-back (long writes leave many clean tables). */
  private trim(): void {
    if (this.tables.size <= this.capacity) return;
    for (const [off, e] of this.tables) {
      if (this.tables.size <= this.capacity) break;
      if (!e.dirty) this.tables.delete(off);
    }
    this.lastOffset = -1;
  }
}
