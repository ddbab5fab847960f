/**
 * Per-principal rate limits: token buckets for requests and for rows (a batch of 1,000 rows
 * costs 1,000 row tokens). Every principal has its own two buckets, each filling at its rate up
 * to its burst. The memory adapter limits one process; the Redis adapter shares the buckets
 * between every serving process and replica.
 */

export interface RateLimits {
  /** Sustained requests per second per principal; 0: unlimited. */
  readonly requestsPerSecond: number;
  /** Bucket size in requests: how many may come at once after an idle spell (>= 1 when limited). */
  readonly requestBurst: number;
  /** Sustained rows per second per principal (a call costs its row count); 0: unlimited. */
  readonly rowsPerSecond: number;
  /** Bucket size in rows (>= 1 when limited); a call with more rows can never pass. */
  readonly rowBurst: number;
}

export interface RateLimiter {
  /**
   * Takes `requests` request tokens (default 1; 0 for the later messages of a stream, whose call
   * was charged once) and `rows` row tokens for the principal, or throws
   * FStoreError('resource_exhausted', '<principal> is over its rate limit of N requests/s' or
   * '... N rows/s (this call needs R rows)', { retryAfterMs }) with a useful retry hint. Takes
   * nothing when refused. A call with more rows than the row burst can never pass: the message
   * says so and `retryAfterMs` is undefined.
   */
  take(principalId: string, rows: number, requests?: number): Promise<void>;
  close(): Promise<void>;
}
