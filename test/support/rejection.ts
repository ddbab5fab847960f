import { expect } from 'vitest';
import { FStoreError } from '../../src/domain/errors.js';

/** Awaits a rejection and returns the FStoreError, failing the test on anything else. */
export async function failure(promise: Promise<unknown>): Promise<FStoreError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(FStoreError);
    return error as FStoreError;
  }
  throw new Error('expected the call to fail');
}
