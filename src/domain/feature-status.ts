/** Per-row outcome of a lookup (DESIGN §4); mirrors fstore.v1.FeatureStatus. */
export type FeatureStatus = 'present' | 'not_found' | 'null_value' | 'outside_max_age';

/**
 * The status of one value at request time. A row is outside max age when
 * `now - eventTime > ttl` (strictly: a row exactly ttl old is still served); that check comes
 * before the null check because an aged-out value is withheld whatever it holds.
 */
export function computeFeatureStatus(
  eventTimeMicros: number | null,
  isNull: boolean,
  ttlMs: number,
  nowMicros: number,
): FeatureStatus {
  if (eventTimeMicros === null) return 'not_found';
  if (ttlMs > 0 && nowMicros - eventTimeMicros > ttlMs * 1000) return 'outside_max_age';
  return isNull ? 'null_value' : 'present';
}

/**
 * When an online key may be dropped: `graceMs` after the row ages out, so that for a while
 * readers are told OUTSIDE_MAX_AGE (with the row's event time) rather than NOT_FOUND.
 * 0 (never) when the view has no ttl.
 */
export function onlineExpiryMs(eventTimeMicros: number, ttlMs: number, graceMs: number): number {
  if (ttlMs <= 0) return 0;
  return Math.floor(eventTimeMicros / 1000) + ttlMs + graceMs;
}
