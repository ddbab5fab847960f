import { FStoreError, invalidArgument } from '../domain/errors.js';
import { validateMicros } from '../domain/input-limits.js';
import type { OfflineStore } from '../ports/offline-store.js';
import type { OnlineStore } from '../ports/online-store.js';
import { toOnlineEntries, writeOnlineEntries } from './online-features.js';
import type { RegistryCache, ServedView } from './registry-cache.js';

const writesInFlight = 3;

export interface MaterializeRequest {
  readonly project: string;
  /** View names; empty: every online view of the project. */
  readonly featureViews: readonly string[];
  /** Microseconds since the epoch, inclusive. */
  readonly startMicros: number;
  /** Microseconds since the epoch, exclusive; 0: now. */
  readonly endMicros: number;
  /** Start each view where its previous run ended (`startMicros` for a first run). */
  readonly incremental: boolean;
}

export interface MaterializeProgress {
  readonly featureView: string;
  readonly startMicros: number;
  readonly endMicros: number;
  readonly rowsRead: number;
  readonly rowsWritten: number;
  readonly rowsStale: number;
  readonly done: boolean;
}

export interface MaterializeOptions {
  /** Rows per offline read and per online write call (one pipeline per node). */
  readonly batchRows: number;
  readonly onlineExpiryGraceMs: number;
  readonly nowMicros?: () => number;
}

/**
 * Materialization (DESIGN §4): for each online view, the latest row per entity among the rows of
 * a time range (greatest event time, then created time, then the row written last, as in
 * historical retrieval: see the offline store's `readLatest`), copied from the offline store to
 * the online store through the same last-write-wins write as pushes. A newer online row is never
 * overwritten, so runs may repeat or overlap; an incremental run starts where the view's last
 * recorded run ended.
 */
export class MaterializeService {
  readonly #nowMicros: () => number;

  constructor(
    private readonly registry: RegistryCache,
    private readonly offline: OfflineStore,
    private readonly online: OnlineStore,
    private readonly options: MaterializeOptions,
  ) {
    this.#nowMicros = options.nowMicros ?? (() => Date.now() * 1000);
  }

  #views(request: MaterializeRequest): ServedView[] {
    const project = this.registry.project(request.project);
    if (request.featureViews.length === 0) {
      const views = [...project.views.values()]
        .filter((view) => view.current.online)
        .sort((a, b) => (a.current.name < b.current.name ? -1 : 1));
      if (views.length === 0)
        throw new FStoreError(
          'failed_precondition',
          `project "${request.project}" has no online feature views`,
        );
      return views;
    }
    return request.featureViews.map((name, index) => {
      const view = project.views.get(name);
      if (!view)
        throw new FStoreError(
          'not_found',
          `feature_views[${index}]: project "${request.project}" has no feature view "${name}"`,
        );
      if (!view.current.online)
        throw new FStoreError(
          'failed_precondition',
          `feature_views[${index}]: feature view "${name}" is not served online`,
        );
      return view;
    });
  }

  async *materialize(request: MaterializeRequest, signal?: AbortSignal): AsyncGenerator<MaterializeProgress> {
    const views = this.#views(request);
    validateMicros('start_time', request.startMicros);
    validateMicros('end_time', request.endMicros);
    const endMicros = request.endMicros === 0 ? this.#nowMicros() : request.endMicros;
    if (!request.incremental && request.startMicros >= endMicros)
      throw invalidArgument('start_time', `must be before end_time (${request.startMicros} ≥ ${endMicros})`);
    for (const view of views) {
      const { current } = view;
      const startMicros = request.incremental
        ? ((await this.offline.lastMaterializedEnd(current.id)) ?? request.startMicros)
        : request.startMicros;
      const progress = {
        featureView: current.name,
        startMicros,
        endMicros,
        rowsRead: 0,
        rowsWritten: 0,
        rowsStale: 0,
      };
      if (startMicros < endMicros) {
        const batches = this.offline.readLatest(
          current,
          { startMicros, endMicros },
          { batchRows: this.options.batchRows, ...(signal ? { signal } : {}) },
        );
        const graceMs = this.options.onlineExpiryGraceMs;
        async function* entries() {
          for await (const batch of batches)
            yield toOnlineEntries(current, batch.keys, batch.eventTimes, batch.values, graceMs);
        }
        // Each entity appears once per run, so writes of consecutive batches may overlap: while
        // Redis applies one batch, the next is read and encoded (at most `writesInFlight`).
        for await (const totals of writeOnlineEntries(this.online, entries(), writesInFlight)) {
          progress.rowsRead = totals.entries;
          progress.rowsWritten = totals.written;
          progress.rowsStale = totals.stale;
          yield { ...progress, done: false };
        }
        // A cancelled run is not recorded: the rest of its rows were never copied.
        signal?.throwIfAborted();
        await this.offline.recordMaterialized(current.id, { startMicros, endMicros });
      }
      yield { ...progress, done: true };
    }
  }
}
