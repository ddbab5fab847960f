import { describe, expect, it } from 'vitest';
import type { FeatureView } from '../../src/domain/model.js';
import type { OfflineRowBatch, OfflineStore, TimeRange } from '../../src/ports/offline-store.js';
import type { OnlineEntry, OnlineStore } from '../../src/ports/online-store.js';
import { MaterializeService } from '../../src/serving/materialize.js';
import type { RegistryCache, ServedView } from '../../src/serving/registry-cache.js';

/**
 * MaterializeService over in-memory fakes: what it records when a run is cut short. The real
 * stores are covered by test/grpc/materialize.test.ts.
 */

const view: FeatureView = {
  id: 1,
  project: 'p',
  name: 'scores',
  version: 1,
  createdAt: new Date(0),
  entities: ['user'],
  joinKeys: [{ name: 'user_id', type: 'string' }],
  features: [{ name: 'score', type: 'double', description: '', tags: {} }],
  ttlMs: 0,
  online: true,
  source: 'batch',
  owner: '',
  description: '',
  tags: {},
};

const served: ServedView = {
  current: view,
  versions: new Map([[1, view]]),
  featureIndexes: new Map([[1, new Map([['score', 0]])]]),
};

const registry = {
  project: () => ({ views: new Map([['scores', served]]), featureSets: new Map() }),
} as unknown as RegistryCache;

const batchOf = (first: number, count: number): OfflineRowBatch => ({
  view,
  keys: [Array.from({ length: count }, (_, index) => `u${first + index}`)],
  eventTimes: Array.from({ length: count }, () => 1_000_000),
  createdTimes: Array.from({ length: count }, () => 1_000_000),
  values: [Array.from({ length: count }, (_, index) => first + index)],
});

function fakeStores() {
  const recorded: TimeRange[] = [];
  const written: OnlineEntry[] = [];
  const offline = {
    // As the port allows: an abort ends the iteration, here without an error.
    async *readLatest(_view: FeatureView, _range: TimeRange, options: { signal?: AbortSignal }) {
      for (let batch = 0; batch < 5; batch++) {
        if (options.signal?.aborted) return;
        yield batchOf(batch * 10, 10);
      }
    },
    async lastMaterializedEnd() {
      return undefined;
    },
    async recordMaterialized(_viewId: number, range: TimeRange) {
      recorded.push(range);
    },
  } as unknown as OfflineStore;
  const online = {
    async writeMany(entries: readonly OnlineEntry[]) {
      written.push(...entries);
      return { written: entries.length, stale: 0 };
    },
  } as unknown as OnlineStore;
  return { offline, online, recorded, written };
}

const request = {
  project: 'p',
  featureViews: ['scores'],
  startMicros: 0,
  endMicros: 2_000_000,
  incremental: false,
};

describe('MaterializeService', () => {
  it('copies every batch and records the run', async () => {
    const { offline, online, recorded, written } = fakeStores();
    const service = new MaterializeService(registry, offline, online, {
      batchRows: 10,
      onlineExpiryGraceMs: 0,
    });
    const progress = [];
    for await (const message of service.materialize(request)) progress.push(message);
    expect(progress.at(-1)).toMatchObject({ done: true, rowsRead: 50, rowsWritten: 50 });
    expect(written).toHaveLength(50);
    expect(recorded).toEqual([{ startMicros: 0, endMicros: 2_000_000 }]);
  });

  it('does not record a run that was cancelled part way, so the next incremental run repeats it', async () => {
    const { offline, online, recorded, written } = fakeStores();
    const service = new MaterializeService(registry, offline, online, {
      batchRows: 10,
      onlineExpiryGraceMs: 0,
    });
    const controller = new AbortController();
    const run = (async () => {
      for await (const message of service.materialize(request, controller.signal))
        if (message.rowsRead > 0) controller.abort(new Error('cancelled'));
    })();
    await expect(run).rejects.toThrow('cancelled');
    expect(written.length).toBeLessThan(50);
    expect(recorded).toEqual([]);
  });
});
