import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests talk to real servers; a slow CI machine must not turn them flaky.
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
