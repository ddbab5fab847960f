import { describe, expect, it } from 'vitest';
import { describeConnectionFailure } from '../../src/adapters/connection-failure.js';

describe('store failures in plain words', () => {
  it('never passes the driver text (addresses, SQL) on', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 10.1.2.3:5432'), { code: 'ECONNREFUSED' });
    expect(describeConnectionFailure(refused)).toBe('connection refused');
    expect(describeConnectionFailure(new Error('connect ECONNREFUSED 127.0.0.1:6379'))).toBe(
      'connection refused',
    );
    expect(
      describeConnectionFailure(
        Object.assign(new Error('password authentication failed for user "x"'), { code: '28P01' }),
      ),
    ).toBe('authentication failed');
    expect(describeConnectionFailure(new Error('timeout exceeded when trying to connect'))).toBe(
      'timed out connecting',
    );
    expect(describeConnectionFailure(new Error('relation "secret_table" does not exist'))).toBe(
      'cannot be reached',
    );
  });
});
