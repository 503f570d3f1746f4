// The local HostFs (io/hostfs.ts): what qcow2/ asks of a host besides bytes, answered by this
// machine. Missing files are answers, not exceptions; errors name the caller's name for a file.

import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { afterAll, describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../../provider/model/errors';
import { ioError } from '../../../provider/qcow2/io/blockfile';
import { localFs } from '../../../provider/qcow2/io/hostfs';
import { SYNC_FILE_RANGE_WRITE, libc, libcUnavailable } from '../../../provider/qcow2/io/libc';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'qcow2-hostfs-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

describe('local host', () => {
  it('open_returns_the_size_and_create_never_touches_an_existing_file', () => {
    const p = path.join(root, 'a.bin');
    fs.writeFileSync(p, Buffer.alloc(1234, 7));
    const { file, size } = localFs.open(p, 'read');
    expect(size).toBe(1234);
    file.close();
    let err: unknown;
    try { localFs.open(p, 'create', 'the image'); } catch (e) { err = e; }
    expect(Qcow2Error.isInstance(err) && err.code).toBe('EXISTS');
    expect((err as Error).message).toMatch(/^the image: file exists/);
    expect(fs.readFileSync(p)).toEqual(Buffer.alloc(1234, 7));
  });

  it('stat_answers_undefined_for_nothing_and_tells_links_from_files', () => {
    expect(localFs.stat(path.join(root, 'missing'))).toBeUndefined();
    const p = path.join(root, 'b.bin');
    fs.writeFileSync(p, 'x');
    fs.symlinkSync(path.join(root, 'nowhere'), path.join(root, 'dangling'));
    expect(localFs.stat(p)).toMatchObject({ kind: 'file', size: 1 });
    expect(localFs.stat(path.join(root, 'dangling'))).toBeUndefined();
    expect(localFs.lstat(path.join(root, 'dangling'))?.kind).toBe('symlink');
    expect(localFs.stat(root)?.kind).toBe('directory');
  });

  it('link_refuses_an_existing_name_and_gives_the_same_file_a_second_name', () => {
    const a = path.join(root, 'c.bin'), b = path.join(root, 'c2.bin');
    fs.writeFileSync(a, 'c');
    localFs.link(a, b);
    expect(localFs.stat(a)!.id).toBe(localFs.stat(b)!.id);
    expect(() => localFs.link(a, b, 'target')).toThrow(/^target: file exists/);
    expect(localFs.unlink(b)).toBe(true);
    expect(localFs.unlink(b)).toBe(false);
  });

  it('holes_are_found_and_made_in_sparse_files', () => {
    const p = path.join(root, 'sparse.raw');
    fs.writeFileSync(p, '');
    fs.truncateSync(p, 4 << 20);
    const { file } = localFs.open(p, 'write');
    try {
      file.write(1 << 20, Buffer.alloc(1 << 20, 1));
      file.flush();
      const hole = localFs.extent(file, 0, 4 << 20);
      const data = localFs.extent(file, 1 << 20, 3 << 20);
      expect(hole).toEqual({ offset: 0, length: 1 << 20, data: false });
      expect(data).toMatchObject({ offset: 1 << 20, data: true });
      localFs.punchHole(file, 1 << 20, 1 << 20);
      expect(file.read(1 << 20, 4096).every((b) => b === 0)).toBe(true);
      expect(file.size()).toBe(4 << 20);
    } finally {
      file.close();
    }
  });
});

describe('writeback', () => {
  it('sync_file_range_reaches_the_kernel_and_start_writeback_leaves_the_bytes_as_written', () => {
    const b = libc();
    if (b === undefined) throw new Error(`libc binding unavailable: ${libcUnavailable()}`);
    const p = path.join(root, 'writeback.raw');
    fs.writeFileSync(p, '');
    const { file } = localFs.open(p, 'write');
    try {
      file.write(0, Buffer.alloc(1 << 20, 7));
      expect(b.syncFileRange((file as unknown as { fd: number }).fd, 0, 0, SYNC_FILE_RANGE_WRITE)).toBe(0);
      expect(b.syncFileRange(-1, 0, 0, SYNC_FILE_RANGE_WRITE)).toBe(-os.constants.errno.EBADF);
      localFs.startWriteback!(file);
      expect(file.read(0, 1 << 20).every((x) => x === 7)).toBe(true);
      expect(file.size()).toBe(1 << 20);
    } finally {
      file.close();
    }
  });
});

describe('files that are not regular files', () => {
  // A FIFO without a writer would block open(2) forever; a device or socket is no image.
  const fifo = path.join(root, 'fifo');
  const sock = path.join(root, 'sock');
  const others: Array<[string, () => string]> = [
    ['a FIFO', () => { if (!fs.existsSync(fifo)) spawnSync('mkfifo', [fifo]); return fifo; }],
    ['a folder', () => root],
    ['a character device', () => '/dev/null'],
    ['a socket', () => sock],
  ];
  let server: net.Server | undefined;
  afterAll(() => server?.close());

  for (const [what, where] of others) {
    for (const mode of ['read', 'write'] as const) {
      it(`open_for_${mode}_refuses_${what.replace(/ /g, '_')}_at_once_with_qemu_img_words`, async () => {
        if (what === 'a socket' && server === undefined) {
          server = net.createServer();
          await new Promise<void>((r) => server!.listen(sock, r));
        }
        const p = where();
        let err: unknown;
        try { localFs.open(p, mode, 'the image'); } catch (e) { err = e; }
        expect(Qcow2Error.isInstance(err) && err.code).toBe('UNSUPPORTED');
        expect((err as Error).message).toBe("'file' driver requires 'the image' to be a regular file");
      });
    }
  }

  it('a_symlink_to_a_fifo_is_refused_too', () => {
    const link = path.join(root, 'to-fifo');
    if (!fs.existsSync(fifo)) spawnSync('mkfifo', [fifo]);
    fs.symlinkSync(fifo, link);
    expect(() => localFs.open(link, 'read')).toThrow(/requires '.*to-fifo' to be a regular file/);
  });
});

describe('errors name the caller\'s file in the C library\'s words', () => {
  const fake = (code: string) => Object.assign(new Error(`${code}: node text, write '/tmp/.x.qcow2-tmp-1-a-i'`), { code });

  it('enospc_names_the_users_file_never_node_text_or_a_temporary_name', () => {
    const e = ioError(fake('ENOSPC'), '/images/vm.qcow2', 'write');
    expect(e.message).toBe("Could not write to '/images/vm.qcow2': No space left on device");
    expect(e.code).toBe('IO');
  });

  it('eisdir_on_open_is_qemu_imgs_regular_file_message', () => {
    expect(ioError(fake('EISDIR'), 'dir', 'open').message).toBe("'file' driver requires 'dir' to be a regular file");
  });

  it('write_errors_of_an_open_file_name_the_name_it_was_opened_under', () => {
    const p = path.join(root, 'ro.bin');
    fs.writeFileSync(p, 'x');
    const { file } = localFs.open(p, 'read', 'the image');
    expect(() => file.write(0, Buffer.from('y'))).toThrow("Could not write to 'the image': Bad file descriptor");
    file.close();
  });
});
