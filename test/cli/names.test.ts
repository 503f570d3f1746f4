// Image names on the command line: plain, file:, json:{...} (QEMU's JSON dialect) and
// --image-opts, each to a local file; ssh:// URLs to a file on a remote host; everything else is
// refused by name.

import { describe, expect, it } from 'vitest';
import { parseImageName, parseQemuJson } from '../../provider/cli/names';

describe('parseImageName', () => {
  it.each([
    ['img.qcow2', { path: 'img.qcow2', display: 'img.qcow2' }],
    ['/tmp/a:b.qcow2', { path: '/tmp/a:b.qcow2', display: '/tmp/a:b.qcow2' }],
    ['file:a:b.qcow2', { path: 'a:b.qcow2', display: './a:b.qcow2' }],
    ['file:/x/y', { path: '/x/y', display: '/x/y' }],
    ["json:{'driver':'qcow2','file':{'driver':'file','filename':'/x/i.qcow2'}}", { path: '/x/i.qcow2', format: 'qcow2', display: '/x/i.qcow2' }],
    ['json:{"driver": "raw", "file": {"filename": "d.raw"}}', { path: 'd.raw', format: 'raw', display: 'd.raw' }],
    ['json:{"driver":"file","filename":"d.img"}', { path: 'd.img', display: 'd.img' }],
  ])('%s', (name, want) => {
    expect(parseImageName(name)).toEqual(want);
  });

  it.each([
    ['ssh://h.example/srv/i.qcow2', { host: 'h.example' }, '/srv/i.qcow2'],
    ['ssh://alice@10.0.0.2:2222/srv/a%20b%2Cc%27%24(x).qcow2', { host: '10.0.0.2', port: 2222, user: 'alice' }, "/srv/a b,c'$(x).qcow2"],
    ['ssh://[::1]:22/x', { host: '::1', port: 22 }, '/x'],
  ])('%s names a file on a remote host', (name, remote, path) => {
    expect(parseImageName(name)).toEqual({ path, remote, display: name });
  });

  it('reads --image-opts as QemuOpts (,, is a comma)', () => {
    expect(parseImageName('driver=qcow2,file.driver=file,file.filename=a,,b.qcow2', true)).toEqual({ path: 'a,b.qcow2', format: 'qcow2', display: 'a,b.qcow2' });
  });

  it.each([
    ['nbd://localhost/x', "Protocol 'nbd' is not supported"],
    ['ssh:host/x', "write ssh://[user@]host[:port]/absolute/path"],
    ['ssh://host/', 'the path must be absolute and name a file'],
    ['ssh://host/x?host_key_check=no', "options after '?' are not supported"],
    ['ssh://u:secret@host/x', 'a password in the URL is not accepted'],
    ['ssh://host/a%zz', 'a bad %-escape'],
    ['http://host/x', "Protocol 'http' is not supported"],
    ['img:x.qcow2', "Unknown protocol 'img'"],
    ['json:{"driver":"nbd","server":{"type":"inet","host":"h","port":"1"}}', "Driver 'nbd' is not supported"],
    ['json:{"driver":"qcow2","file":{"driver":"ssh","path":"/x"}}', "Driver 'ssh' is not supported here: an image on a remote host is named by a URL only"],
    ['json:{"driver":"qcow2","file":{"driver":"blkdebug","image":{"driver":"file","filename":"x"}}}', "Driver 'blkdebug' is not supported"],
    ['json:{"driver":"vmdk2","file":"x"}', "Unknown driver 'vmdk2'"],
    ['json:{"driver":"qcow2","file":"node0"}', "Option 'file' in the json: file name is not supported"],
    ['json:{"driver":"qcow2","file":{"driver":"file","filename":"x","aio":"native"}}', "Option 'file.aio'"],
    ['json:{"driver":"qcow2"}', 'names no file'],
    ['json:{"filename":"x"}', 'Must specify either driver or file'],
    ['json:["x"]', 'must be a JSON object'],
    ['json:{"driver":"qcow2",}', 'expected a key'],
    ['json:{"driver":"qcow2"} x', 'trailing text'],
    ['json:{"driver":"qcow2","driver":"raw"}', "duplicate key 'driver'"],
    ['json:{"driver":"qc\\x"}', 'invalid escape'],
    ['json:{"driver":"qcow2', 'unterminated string'],
  ])('refuses %s', (name, words) => {
    expect(() => parseImageName(name)).toThrow(words);
  });

  it('takes names without a driver (the format probed), a data file named at open time, and qcow2 cache sizes', () => {
    expect(parseImageName('data-file.filename=d.raw,file.filename=x', true)).toEqual({ path: 'x', display: 'x', dataFile: 'd.raw' });
    expect(parseImageName('json:{"file":{"driver":"file","filename":"x"}}')).toEqual({ path: 'x', display: 'x' });
    expect(parseImageName('driver=qcow2,file.filename=x,l2-cache-entry-size=4096,refcount-cache-size=1M', true)).toEqual({ path: 'x', display: 'x', format: 'qcow2' });
    expect(() => parseImageName('driver=raw,file.filename=x,l2-cache-size=1M', true)).toThrow("Option 'l2-cache-size'");
    expect(() => parseImageName('driver=qcow2,file.filename=x,data-file.driver=nbd', true)).toThrow("Driver 'nbd' is not supported");
  });

  it('refuses --image-opts that name more than a local file', () => {
    expect(() => parseImageName('driver=qcow2,file.driver=nbd,file.host=h', true)).toThrow("Driver 'nbd' is not supported");
    expect(() => parseImageName('driver=qcow2,file.filename=x,cache.direct=on', true)).toThrow("Option 'cache.direct'");
    expect(() => parseImageName('driver=qcow2,file.filename', true)).toThrow('expected key=value');
  });
});

describe('parseQemuJson', () => {
  it('reads JSON and single-quoted strings, escapes included', () => {
    expect(parseQemuJson(` { 'a' : [1, -2.5e3, true, false, null], "b": {"c": 'x\\'y\\u0041'} } `)).toEqual({ a: [1, -2500, true, false, null], b: { c: "x'yA" } });
  });

  it('bounds nesting', () => {
    expect(() => parseQemuJson('['.repeat(40) + ']'.repeat(40))).toThrow('nesting too deep');
  });
});
