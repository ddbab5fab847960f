import { describe, expect, it } from 'vitest';
import { configDefaults, loadConfig } from '../../src/config/config.js';

describe('loadConfig', () => {
  it('applies defaults when nothing is set', () => {
    const config = loadConfig({});
    expect(config).toMatchObject({
      grpcPort: configDefaults.grpcPort,
      processes: 1,
      maxBatchRows: configDefaults.maxBatchRows,
      redisUrl: undefined,
      postgresUrl: undefined,
    });
  });

  it('reads FSTORE_* variables and lets overrides (flags) win', () => {
    const config = loadConfig(
      { FSTORE_GRPC_PORT: '7000', FSTORE_REDIS_URL: 'redis://127.0.0.1:6379', FSTORE_PROCESSES: 'auto' },
      { grpcPort: '7001' },
    );
    expect(config).toMatchObject({ grpcPort: 7001, redisUrl: 'redis://127.0.0.1:6379', processes: 'auto' });
  });

  it('treats empty variables as unset', () => {
    expect(loadConfig({ FSTORE_REDIS_URL: '', FSTORE_POSTGRES_URL: ' ' })).toMatchObject({
      redisUrl: undefined,
      postgresUrl: undefined,
    });
  });

  it.each([
    [{ FSTORE_GRPC_PORT: 'abc' }, 'FSTORE_GRPC_PORT'],
    [{ FSTORE_GRPC_PORT: '70000' }, 'FSTORE_GRPC_PORT'],
    [{ FSTORE_MAX_BATCH_ROWS: '0' }, 'FSTORE_MAX_BATCH_ROWS'],
    [{ FSTORE_REDIS_URL: 'not a url' }, 'FSTORE_REDIS_URL'],
    [{ FSTORE_REDIS_CLUSTER_NODES: 'a:1,b' }, 'FSTORE_REDIS_CLUSTER_NODES'],
    [{ FSTORE_LOG_LEVEL: 'loud' }, 'FSTORE_LOG_LEVEL'],
    [{ FSTORE_PROCESSES: '2' }, 'FSTORE_PROCESSES'],
    [{ FSTORE_REDIS_URL: 'redis://a:1', FSTORE_REDIS_CLUSTER_NODES: 'a:1' }, 'FSTORE_REDIS_CLUSTER_NODES'],
  ])('fails fast naming the bad setting: %o', (environment, name) => {
    expect(() => loadConfig(environment)).toThrow(
      expect.objectContaining({ code: 'invalid_argument', message: expect.stringContaining(name) }),
    );
  });
});
