// Sizes as the Image resource accepts them: bytes, or a decimal number with one of qemu-img's
// suffixes (k, M, G, T, P, E; powers of 1024; B for bytes), e.g. "20G" or "1.5T".
//
// The pack is self-contained (it is published without the provider), so this is a small copy of
// the part of qemu_strtosz that the Image input schema admits (^[0-9]+(\.[0-9]+)?[kKMGTPEbB]?$).
// It agrees with pulumi-qcow2's parseSize on that language (test/policy/policies.test.ts checks
// it), except that a fraction is rounded exactly here where qemu goes through a double: at most
// one byte apart, which no size limit cares about.

const I64_MAX = (1n << 63n) - 1n;

const MULTIPLIERS: Record<string, bigint> = {
  b: 1n,
  k: 1n << 10n,
  m: 1n << 20n,
  g: 1n << 30n,
  t: 1n << 40n,
  p: 1n << 50n,
  e: 1n << 60n,
};

/** The size text the Image schema accepts; also used in the policy config schema. */
export const SIZE_PATTERN = '^[0-9]+(\\.[0-9]+)?[kKMGTPEbB]?$';

/** Bytes of a size given as a number or qemu-style text; undefined when it is not a valid size. */
export function parseSize(value: unknown): bigint | undefined {
  if (typeof value === 'number') {
    return Number.isSafeInteger(value) && value >= 0 ? BigInt(value) : undefined;
  }
  if (typeof value !== 'string') return undefined;
  const m = /^([0-9]+)(?:\.([0-9]+))?([kKmMgGtTpPeEbB])?$/.exec(value);
  if (!m) return undefined;
  const [, int, frac, suffix] = m;
  const mul = suffix ? MULTIPLIERS[suffix.toLowerCase()] : 1n;
  let bytes = BigInt(int) * mul;
  if (frac !== undefined && /[1-9]/.test(frac)) {
    // qemu: a fraction needs a multiplier ("1.5" and "1.5B" are not sizes).
    if (mul === 1n) return undefined;
    const den = 10n ** BigInt(frac.length);
    bytes += (BigInt(frac) * mul * 2n + den) / (den * 2n); // round half up
  }
  return bytes > I64_MAX ? undefined : bytes;
}

/** "2 TiB"-style text for messages ("about 1.5 TiB" when not a whole number of the unit). */
export function describeSize(bytes: bigint): string {
  const units: Array<[string, bigint]> = [
    ['EiB', 1n << 60n],
    ['PiB', 1n << 50n],
    ['TiB', 1n << 40n],
    ['GiB', 1n << 30n],
    ['MiB', 1n << 20n],
    ['KiB', 1n << 10n],
  ];
  for (const [name, unit] of units) {
    if (bytes >= unit) {
      const whole = bytes / unit;
      const tenths = ((bytes % unit) * 10n) / unit;
      return bytes % unit === 0n ? `${whole} ${name}` : `about ${whole}.${tenths} ${name}`;
    }
  }
  return `${bytes} bytes`;
}
