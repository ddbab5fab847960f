import { describe, expect, it } from 'vitest';
import { describeConnectionFailure, failureReason } from '../../src/adapters/connection-failure.js';
import { translateDatabaseError } from '../../src/adapters/postgres/pool.js';
import { FStoreError } from '../../src/domain/errors.js';

/** The plain-words reason the health log and /readyz give for a store that does not answer. */
describe('failure reasons', () => {
  it('takes the words an adapter already gave callers', () => {
    expect(
      failureReason(
        new FStoreError('unavailable', 'online store (Redis) is unavailable: authentication failed'),
      ),
    ).toBe('authentication failed');
    expect(
      failureReason(
        new FStoreError('unavailable', 'online store (Redis) is unavailable: no answer within 1000 ms'),
      ),
    ).toBe('no answer within 1000 ms');
  });

  it('names PostgreSQL refusals, from the server or from pg itself', () => {
    const reasonOf = (error: Error) => failureReason(translateDatabaseError(error, 'ping'));
    const coded = (message: string, code: string) => Object.assign(new Error(message), { code });
    expect(reasonOf(coded('password authentication failed for user "x"', '28P01'))).toBe(
      'authentication failed',
    );
    expect(reasonOf(coded('pg_hba.conf rejects connection for host …', '28000'))).toBe(
      'authentication failed',
    );
    expect(reasonOf(coded('database "nodb" does not exist', '3D000'))).toBe('the database does not exist');
    expect(reasonOf(coded('connect ECONNREFUSED 10.0.0.1:5432', 'ECONNREFUSED'))).toBe('connection refused');
    expect(reasonOf(coded('getaddrinfo ENOTFOUND db.internal', 'ENOTFOUND'))).toBe('host name not resolved');
    // SCRAM asked for and no password configured: pg refuses before the server decides.
    const sasl = new Error('SASL: SCRAM-SERVER-FIRST-MESSAGE: client password must be a string');
    expect(translateDatabaseError(sasl).code).toBe('unavailable');
    expect(reasonOf(sasl)).toBe('authentication failed');
    expect(reasonOf(coded('permission denied for table x', '42501'))).toBe('permission denied');
  });

  it('names Redis refusals and keeps the code of an error without a message', () => {
    expect(describeConnectionFailure(new Error('WRONGPASS invalid username-password pair'))).toBe(
      'authentication failed',
    );
    expect(describeConnectionFailure(new Error('Ready check failed: NOAUTH Authentication required.'))).toBe(
      'authentication failed',
    );
    expect(
      describeConnectionFailure(new Error("NOPERM this user has no permissions to run the 'ping' command")),
    ).toBe('permission denied');
    // Node's happy-eyeballs connect: an AggregateError with an empty message, codes on its parts.
    const refused = new AggregateError(
      [Object.assign(new Error('connect ECONNREFUSED ::1:6379'), { code: 'ECONNREFUSED' })],
      '',
    );
    expect(failureReason(refused)).toBe('connection refused');
    expect(
      failureReason(new FStoreError('internal', 'online store (Redis) failed: …', { cause: refused })),
    ).toBe('connection refused');
    expect(failureReason(new FStoreError('deadline_exceeded', 'a statement timed out'))).toBe('timed out');
  });
});
