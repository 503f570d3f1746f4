// The QMP codec: integers exact beyond 2^53, framing of one-per-line and pretty-printed objects
// split anywhere, and file names inside QEMU's "json:" names.

import { describe, expect, it } from 'vitest';
import { encodeJson, imageFileName, parseJson } from '../../provider/transport/qmp';
import { JsonSplitter } from '../../provider/transport/qmp/json';

describe('parseJson', () => {
  it('keeps_integers_beyond_2^53_exact_as_bigint', () => {
    const v = parseJson('{"count": 18446744073709551615, "size": 9007199254740993, "small": 65536, "neg": -9223372036854775808}') as Record<string, unknown>;
    expect(v.count).toBe(18446744073709551615n);
    expect(v.size).toBe(9007199254740993n);
    expect(v.small).toBe(65536);
    expect(v.neg).toBe(-9223372036854775808n);
  });

  it('reads_fractions_escapes_and_literals', () => {
    expect(parseJson('[1.5, -2e3, "a\\"b\\u00e9\\n", true, false, null, {}]')).toEqual([1.5, -2000, 'a"bé\n', true, false, null, {}]);
  });

  it('keeps_a___proto___member_as_data', () => {
    const v = parseJson('{"__proto__": {"polluted": 1}}') as Record<string, unknown>;
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect(Object.keys(v)).toEqual(['__proto__']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('rejects_malformed_text', () => {
    for (const bad of ['{"a": }', '{"a" 1}', '[1, 2', '{"a": 1} x', '"unterminated', '01']) {
      expect(() => parseJson(bad), bad).toThrow(SyntaxError);
    }
  });
});

describe('encodeJson', () => {
  it('writes_bigint_as_a_bare_integer_and_drops_undefined_members', () => {
    expect(encodeJson({ execute: 'block_resize', arguments: { 'node-name': 'd', size: 18446744073709551104n, skip: undefined }, id: 'x' })).toBe(
      '{"execute":"block_resize","arguments":{"node-name":"d","size":18446744073709551104},"id":"x"}',
    );
    expect(parseJson(encodeJson({ s: 'é"\\', n: [1, 2n, null] }))).toEqual({ s: 'é"\\', n: [1, 2, null] });
  });

  it('refuses_values_json_cannot_carry', () => {
    expect(() => encodeJson({ n: NaN })).toThrow(TypeError);
    expect(() => encodeJson({ f: () => 1 })).toThrow(TypeError);
  });
});

describe('JsonSplitter', () => {
  const stream =
    '{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}\r\n' +
    '{\n    "return": {\n        "desc": "brace } and quote \\" in a string, é"\n    },\n    "id": "a"\n}\n' +
    '{"event": "SHUTDOWN", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n';

  it('splits_objects_whatever_the_chunk_boundaries', () => {
    const bytes = Buffer.from(stream, 'utf8');
    const whole = new JsonSplitter().push(bytes, 1 << 20);
    expect(whole).toHaveLength(3);
    expect(parseJson(whole[1]!)).toEqual({ return: { desc: 'brace } and quote " in a string, é' }, id: 'a' });
    for (const size of [1, 2, 3, 7, 64]) {
      const sp = new JsonSplitter();
      const out: string[] = [];
      for (let i = 0; i < bytes.length; i += size) out.push(...sp.push(bytes.subarray(i, i + size), 1 << 20));
      expect(out, `chunks of ${size}`).toEqual(whole);
    }
  });

  it('refuses_text_that_is_not_a_stream_of_objects', () => {
    expect(() => new JsonSplitter().push(Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'), 1 << 20)).toThrow(SyntaxError);
    expect(() => new JsonSplitter().push(Buffer.from('}'), 1 << 20)).toThrow(SyntaxError);
  });

  it('refuses_a_message_over_the_limit', () => {
    expect(() => new JsonSplitter().push(Buffer.from(`{"a": "${'x'.repeat(100)}`), 50)).toThrow(RangeError);
  });
});

describe('imageFileName', () => {
  // What QEMU 7.2 reported for a throttle filter over a qcow2 node with a separate data-file node.
  const throttled =
    'json:{"throttle-group": "tg0", "driver": "throttle", "file": {"data-file": {"driver": "file", "filename": "/srv/d.raw"}, ' +
    '"driver": "qcow2", "file": {"driver": "file", "filename": "/srv/vm.qcow2"}}}';

  it('takes_a_plain_name_as_it_is', () => {
    expect(imageFileName('/srv/vm.qcow2')).toBe('/srv/vm.qcow2');
    expect(imageFileName('')).toBeUndefined();
  });

  it('finds_the_qcow2_nodes_file_inside_a_json_name', () => {
    expect(imageFileName(throttled)).toBe('/srv/vm.qcow2');
    expect(imageFileName('json:{"driver": "qcow2", "file": {"driver": "raw", "offset": 0, "file": {"driver": "file", "filename": "/a b.qcow2"}}}')).toBe(
      '/a b.qcow2',
    );
  });

  it('gives_up_on_names_that_hold_no_file', () => {
    expect(imageFileName('json:{"driver": "qcow2", "file": "node-ref"}')).toBeUndefined();
    expect(imageFileName('json:{"driver": "nbd", "server": {"type": "unix", "path": "/s"}}')).toBeUndefined();
    expect(imageFileName('json:{not json')).toBeUndefined();
  });
});
