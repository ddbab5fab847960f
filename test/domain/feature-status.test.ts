import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { computeFeatureStatus, type FeatureStatus, onlineExpiryMs } from '../../src/domain/feature-status.js';
import { registryLimits } from '../../src/domain/registry-rules.js';

/**
 * Brute-force oracle in exact integer arithmetic (BigInt): a row is served while its age, now
 * minus its event time in microseconds, is at most the ttl; a ttl of 0 never ages out.
 */
function oracle(
  eventTimeMicros: number | null,
  isNull: boolean,
  ttlMs: number,
  nowMicros: number,
): FeatureStatus {
  if (eventTimeMicros === null) return 'not_found';
  const age = BigInt(nowMicros) - BigInt(eventTimeMicros);
  if (ttlMs > 0 && age > BigInt(ttlMs) * 1000n) return 'outside_max_age';
  return isNull ? 'null_value' : 'present';
}

// Times within ±2^51 µs (±71,000 years) and ttls up to the registry's century keep every
// difference an exact double, which is the domain the function is specified for.
const time = fc.integer({ min: -(2 ** 51), max: 2 ** 51 });
const ttlMs = fc.oneof(
  fc.constant(0),
  fc.integer({ min: 1, max: 1_000 }),
  fc.integer({ min: 1, max: registryLimits.maxTtlMs }),
);

describe('computeFeatureStatus', () => {
  it('serves a row exactly ttl old and withholds it one microsecond later', () => {
    const now = 1_700_000_000_000_000;
    expect(computeFeatureStatus(now - 60_000_000, false, 60_000, now)).toBe('present');
    expect(computeFeatureStatus(now - 60_000_001, false, 60_000, now)).toBe('outside_max_age');
    expect(computeFeatureStatus(now - 60_000_001, true, 60_000, now)).toBe('outside_max_age');
    expect(computeFeatureStatus(now - 60_000_000, true, 60_000, now)).toBe('null_value');
  });

  it('never ages out with a ttl of 0, and serves rows from the future', () => {
    expect(computeFeatureStatus(-(2 ** 51), false, 0, 2 ** 51)).toBe('present');
    expect(computeFeatureStatus(2_000, false, 1, 1_000)).toBe('present');
    expect(computeFeatureStatus(null, false, 1, 1_000)).toBe('not_found');
  });

  it('agrees with the brute-force oracle on random rows', () => {
    fc.assert(
      fc.property(
        fc.option(time, { nil: null }),
        fc.boolean(),
        ttlMs,
        time,
        (eventTime, isNull, ttl, now) => {
          expect(computeFeatureStatus(eventTime, isNull, ttl, now)).toBe(oracle(eventTime, isNull, ttl, now));
        },
      ),
      { numRuns: 2_000 },
    );
  });

  it('agrees with the oracle at the ttl boundary: one microsecond either side', () => {
    fc.assert(
      fc.property(time, ttlMs, fc.integer({ min: -2, max: 2 }), fc.boolean(), (now, ttl, offset, isNull) => {
        const eventTime = now - ttl * 1000 + offset; // offset < 0: over the ttl, > 0: within it
        const status = computeFeatureStatus(eventTime, isNull, ttl, now);
        expect(status).toBe(oracle(eventTime, isNull, ttl, now));
        if (ttl > 0 && offset < 0) expect(status).toBe('outside_max_age');
        else expect(status).toBe(isNull ? 'null_value' : 'present');
      }),
      { numRuns: 2_000 },
    );
  });
});

describe('onlineExpiryMs', () => {
  it('expires grace after the row ages out, and never without a ttl', () => {
    expect(onlineExpiryMs(1_700_000_000_000_000, 60_000, 5_000)).toBe(1_700_000_000_000 + 65_000);
    expect(onlineExpiryMs(1_700_000_000_000_999, 60_000, 0)).toBe(1_700_000_000_000 + 60_000);
    expect(onlineExpiryMs(1_700_000_000_000_000, 0, 5_000)).toBe(0);
  });

  it('never drops a key while its row is still served', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 51 }),
        fc.integer({ min: 1, max: registryLimits.maxTtlMs }),
        (eventTime, ttl) => {
          const expiryMs = onlineExpiryMs(eventTime, ttl, 0);
          // The last microsecond at which the row is still PRESENT lies before the expiry instant.
          const lastServedMicros = eventTime + ttl * 1000;
          expect(computeFeatureStatus(eventTime, false, ttl, lastServedMicros)).toBe('present');
          expect(expiryMs * 1000).toBeGreaterThan(lastServedMicros - 1000);
        },
      ),
    );
  });
});
