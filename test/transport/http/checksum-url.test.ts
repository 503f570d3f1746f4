// The checksum spec users write (`sourceChecksum`), the streaming digest, and how URLs appear in
// messages (never with credentials or signed-URL secrets).

import * as crypto from 'crypto';
import { describe, expect, it } from 'vitest';
import { Qcow2Error } from '../../../provider/model/errors';
import { formatChecksum, parseChecksum, parseSourceUrl, redactUrl, StreamingDigest } from '../../../provider/transport/http';
import { verifyChecksum } from '../../../provider/transport/http/checksum';

const HEX256 = 'ab'.repeat(32);
const HEX512 = 'cd'.repeat(64);

function refusal(fn: () => unknown): Qcow2Error {
  try {
    fn();
  } catch (e) {
    expect(Qcow2Error.isInstance(e)).toBe(true);
    return e as Qcow2Error;
  }
  throw new Error('expected a refusal');
}

describe('parseChecksum', () => {
  it('accepts sha256 and sha512 in any case, normalised to lower case', () => {
    expect(parseChecksum(`sha256:${HEX256}`)).toEqual({ algorithm: 'sha256', hex: HEX256 });
    expect(parseChecksum(`SHA512:${HEX512.toUpperCase()}`)).toEqual({ algorithm: 'sha512', hex: HEX512 });
    expect(formatChecksum(parseChecksum(` sha256:${HEX256} `))).toBe(`sha256:${HEX256}`);
  });

  it.each([
    ['', 'is not a checksum'],
    [HEX256, 'is not a checksum'],
    [`md5:${'a'.repeat(32)}`, "the algorithm 'md5' is not supported"],
    [`sha1:${'a'.repeat(40)}`, "the algorithm 'sha1' is not supported"],
    [`sha256:${HEX256.slice(2)}`, 'a sha256 digest has 64 hex digits, this one has 62'],
    [`sha512:${HEX256}`, 'a sha512 digest has 128 hex digits, this one has 64'],
    [`sha256:${HEX256.slice(1)}g`, 'is not a checksum'],
  ])('refuses %j naming sourceChecksum', (spec, why) => {
    const e = refusal(() => parseChecksum(spec));
    expect(e.code).toBe('INVALID_OPTION');
    expect(e.property).toBe('sourceChecksum');
    expect(e.message).toMatch(/^sourceChecksum: /);
    expect(e.message).toContain(why);
    expect(e.message).toContain("expected 'sha256:<64 hex digits>' or 'sha512:<128 hex digits>'");
  });

  it('names another property when asked (a CLI flag)', () => {
    expect(refusal(() => parseChecksum('x', '--checksum')).message).toMatch(/^--checksum: /);
  });
});

describe('StreamingDigest', () => {
  it('hashes across chunks, keeps going after current(), and restarts', () => {
    const d = new StreamingDigest('sha256');
    d.update(Buffer.from('hello '));
    const partial = d.current();
    d.update(Buffer.from('world'));
    expect(partial.hex).toBe(crypto.createHash('sha256').update('hello ').digest('hex'));
    expect(d.current().hex).toBe(crypto.createHash('sha256').update('hello world').digest('hex'));
    expect(d.bytes).toBe(11);
    d.reset();
    expect(d.bytes).toBe(0);
    expect(d.current().hex).toBe(crypto.createHash('sha256').digest('hex'));
  });

  it('verifyChecksum names both digests on a mismatch', () => {
    const e = refusal(() => verifyChecksum({ algorithm: 'sha256', hex: HEX256 }, { algorithm: 'sha256', hex: '00'.repeat(32) }, 'https://h/x.img'));
    expect(e.code).toBe('CHECKSUM');
    expect(e.message).toContain(`Checksum mismatch for https://h/x.img: expected sha256:${HEX256}, got sha256:${'00'.repeat(32)}`);
  });
});

describe('URLs', () => {
  it('only http and https are downloads', () => {
    expect(parseSourceUrl('https://example.com/a.img').host).toBe('example.com');
    expect(refusal(() => parseSourceUrl('ftp://example.com/a.img')).message).toContain('only http:// and https:// URLs can be downloaded');
    expect(refusal(() => parseSourceUrl('https://u:p@[bad')).message).not.toContain('u:p');
  });

  it('redactUrl hides user info and secret-looking query values, keeps the rest', () => {
    expect(redactUrl('https://alice:pw@example.com:8443/a/b.img?X-Amz-Signature=abc&X-Amz-Credential=key&version=3&token=t')).toBe(
      'https://***@example.com:8443/a/b.img?X-Amz-Signature=***&X-Amz-Credential=***&version=3&token=***',
    );
    expect(redactUrl('http://example.com/plain.img')).toBe('http://example.com/plain.img');
    expect(redactUrl('https://example.com/x?sig=1&se=2')).toBe('https://example.com/x?sig=***&se=2');
  });
});
