import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Counter, collectDefaultMetrics, Gauge, Histogram, type Registry } from 'prom-client';
import type { FeatureStatus } from '../domain/feature-status.js';
import type { DriftCheckSink } from '../serving/drift-monitor.js';
import type { OnlineReadResult } from '../serving/online-features.js';
import type { StreamStats } from '../stream/stream-runner.js';

/**
 * The Prometheus metrics of FStore (DESIGN §5), on a registry of the caller's (one per serving
 * instance, so tests can run several). Names follow the Prometheus conventions: base units
 * (seconds, bytes), `_total` for counters, the unit as the suffix. Recording is a few map lookups
 * and additions on the calling thread; exposition happens only when /metrics is scraped.
 */

// Latency buckets from 100 µs to 10 s: online lookups live in the first decade.
const latencyBuckets = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
const sizeBuckets = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000];
const ageBuckets = [1, 10, 60, 300, 900, 3600, 4 * 3600, 86_400, 7 * 86_400, 30 * 86_400, 365 * 86_400];

const statusLabels: Record<FeatureStatus, string> = {
  present: 'present',
  null_value: 'null',
  not_found: 'not_found',
  outside_max_age: 'outside_max_age',
};

export interface ServingMetrics {
  readonly registry: Registry;
  readonly rpcDuration: Histogram<'method' | 'code'>;
  readonly storeDuration: Histogram<'store' | 'operation' | 'outcome'>;
  /** Records one answered online read: batch size, features, views, statuses, served ages. */
  observeOnlineRead(project: string, entities: number, result: OnlineReadResult): void;
  /** Scheduled drift checks' figures as gauges and counters. */
  readonly driftSink: DriftCheckSink;
  /** Exposes the worker pool's queue and utilisation at every scrape. */
  watchWorkerPool(pool: {
    readonly queueSize: number;
    readonly utilization: number;
    readonly threads: number;
  }): void;
  /** Stops the event-loop-delay histogram. */
  close(): void;
}

function eventLoopLag(registry: Registry): () => void {
  const delay = monitorEventLoopDelay({ resolution: 10 });
  delay.enable();
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read());
      },
    });
  // prom-client's default metrics have nodejs_eventloop_lag_* too; these are over the scrape interval.
  gauge('fstore_eventloop_delay_p99_seconds', 'Event loop delay p99 since the previous scrape', () => {
    const value = delay.percentile(99) / 1e9;
    delay.reset();
    return Number.isFinite(value) ? value : 0;
  });
  return () => delay.disable();
}

export function createServingMetrics(registry: Registry): ServingMetrics {
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 10 });
  const stopLag = eventLoopLag(registry);
  const registers = [registry];
  const rpcDuration = new Histogram({
    name: 'fstore_rpc_duration_seconds',
    help: 'gRPC call duration by method and status code',
    labelNames: ['method', 'code'] as const,
    buckets: latencyBuckets,
    registers,
  });
  const storeDuration = new Histogram({
    name: 'fstore_store_operation_duration_seconds',
    help: 'Online (Redis) and offline (PostgreSQL) store call duration',
    labelNames: ['store', 'operation', 'outcome'] as const,
    buckets: latencyBuckets,
    registers,
  });
  const entities = new Histogram({
    name: 'fstore_online_request_entities',
    help: 'Entity rows per online read',
    buckets: sizeBuckets,
    registers,
  });
  const features = new Histogram({
    name: 'fstore_online_request_features',
    help: 'Features per online read',
    buckets: sizeBuckets,
    registers,
  });
  const views = new Histogram({
    name: 'fstore_online_request_views',
    help: 'Feature views per online read',
    buckets: [1, 2, 3, 5, 10, 20, 50],
    registers,
  });
  const values = new Counter({
    name: 'fstore_online_values_total',
    help: 'Feature values answered, by status (present, null, not_found, outside_max_age)',
    labelNames: ['status'] as const,
    registers,
  });
  const servedAge = new Histogram({
    name: 'fstore_online_served_age_seconds',
    help: 'Age of served rows (request time minus event time), per feature view',
    labelNames: ['project', 'view'] as const,
    buckets: ageBuckets,
    registers,
  });
  const statusCounters = Object.fromEntries(
    Object.entries(statusLabels).map(([status, label]) => [status, values.labels(label)]),
  ) as Record<FeatureStatus, Counter.Internal>;

  const drift = {
    psi: new Gauge({
      name: 'fstore_drift_psi',
      help: 'PSI of the latest scheduled check',
      labelNames: ['project', 'view', 'feature'] as const,
      registers,
    }),
    level: new Gauge({
      name: 'fstore_drift_level',
      help: 'Drift level of the latest check: 0 ok, 1 warn, 2 alert',
      labelNames: ['project', 'view', 'feature'] as const,
      registers,
    }),
    ks: new Gauge({
      name: 'fstore_drift_ks_statistic',
      help: 'Kolmogorov–Smirnov statistic of the latest check',
      labelNames: ['project', 'view', 'feature'] as const,
      registers,
    }),
    js: new Gauge({
      name: 'fstore_drift_jensen_shannon_distance',
      help: 'Jensen–Shannon distance (base 2) of the latest check',
      labelNames: ['project', 'view', 'feature'] as const,
      registers,
    }),
    chi: new Gauge({
      name: 'fstore_drift_chi_square_p_value',
      help: 'Chi-square p-value of the latest check (categorical features)',
      labelNames: ['project', 'view', 'feature'] as const,
      registers,
    }),
    alerts: new Counter({
      name: 'fstore_drift_alerts_total',
      help: 'Times a feature crossed into a higher PSI band',
      labelNames: ['project', 'view', 'feature', 'level'] as const,
      registers,
    }),
    violations: new Gauge({
      name: 'fstore_data_quality_violations',
      help: 'Rule breaches in the latest checked window',
      labelNames: ['project', 'view', 'feature', 'rule'] as const,
      registers,
    }),
    checks: new Histogram({
      name: 'fstore_drift_check_duration_seconds',
      help: 'Scheduled drift and data-quality check duration',
      labelNames: ['project', 'view', 'outcome'] as const,
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300],
      registers,
    }),
    lastEventAge: new Gauge({
      name: 'fstore_feature_view_last_event_age_seconds',
      help: 'Age of the newest offline row of a monitored view at its latest check',
      labelNames: ['project', 'view'] as const,
      registers,
    }),
  };
  const levelValue = { ok: 0, warn: 1, alert: 2 } as const;
  const driftSink: DriftCheckSink = {
    recordDrift(sample) {
      const labels = { project: sample.project, view: sample.view, feature: sample.feature };
      drift.psi.set(labels, sample.psi);
      drift.level.set(labels, levelValue[sample.level]);
      drift.js.set(labels, sample.jensenShannon);
      if (sample.ksStatistic !== undefined) drift.ks.set(labels, sample.ksStatistic);
      if (sample.chiSquarePValue !== undefined) drift.chi.set(labels, sample.chiSquarePValue);
    },
    recordAlert(alert) {
      drift.alerts.inc({
        project: alert.project,
        view: alert.view,
        feature: alert.feature,
        level: alert.level,
      });
    },
    recordViolations(found) {
      drift.violations.set(
        { project: found.project, view: found.view, feature: found.feature, rule: found.rule },
        found.count,
      );
    },
    observeCheck(check) {
      drift.checks.observe(
        { project: check.project, view: check.view, outcome: check.ok ? 'ok' : 'error' },
        check.seconds,
      );
    },
    setLastEventAge(age) {
      // No rows in the window: the gauge goes away rather than claim an age.
      if (age.seconds === undefined) drift.lastEventAge.remove({ project: age.project, view: age.view });
      else drift.lastEventAge.set({ project: age.project, view: age.view }, age.seconds);
    },
  };

  return {
    registry,
    rpcDuration,
    storeDuration,
    observeOnlineRead(project, entityCount, result) {
      entities.observe(entityCount);
      features.observe(result.columns.length);
      // Columns of one view share their event times (one array per view): count each once.
      const seenTimes = new Set<unknown>();
      for (const column of result.columns) {
        const counts = { present: 0, null_value: 0, not_found: 0, outside_max_age: 0 };
        for (const status of column.statuses) counts[status] += 1;
        for (const status of Object.keys(counts) as FeatureStatus[])
          if (counts[status] > 0) statusCounters[status].inc(counts[status]);
        if (seenTimes.has(column.eventTimes)) continue;
        seenTimes.add(column.eventTimes);
        const view = column.reference.slice(0, column.reference.indexOf(':'));
        const histogram = servedAge.labels(project, view);
        for (let row = 0; row < column.eventTimes.length; row++)
          if (column.statuses[row] === 'present' || column.statuses[row] === 'null_value')
            histogram.observe(
              Math.max(0, (result.requestTimeMicros - (column.eventTimes[row] as number)) / 1e6),
            );
      }
      views.observe(seenTimes.size);
    },
    driftSink,
    watchWorkerPool(pool) {
      new Gauge({
        name: 'fstore_worker_pool_queue_depth',
        help: 'Tasks waiting for a worker thread',
        registers,
        collect() {
          this.set(pool.queueSize);
        },
      });
      new Gauge({
        name: 'fstore_worker_pool_utilization_ratio',
        help: 'Share of worker thread time spent running tasks since the pool started',
        registers,
        collect() {
          this.set(pool.utilization);
        },
      });
      new Gauge({
        name: 'fstore_worker_pool_threads',
        help: 'Most worker threads of the pool',
        registers,
        collect() {
          this.set(pool.threads);
        },
      });
    },
    close: stopLag,
  };
}

/** Stream-tier metrics read from the runner's figures at every scrape. */
export function registerStreamMetrics(
  registry: Registry,
  aggregation: string,
  stats: () => StreamStats,
): void {
  collectDefaultMetrics({ register: registry });
  const registers = [registry];
  const counterFrom = (name: string, help: string, read: (current: StreamStats) => number) => {
    // Counters from the runner's cumulative totals: inc by the difference since the last scrape.
    let last = 0;
    new Counter({
      name,
      help,
      labelNames: ['aggregation'] as const,
      registers,
      collect() {
        const value = read(stats());
        if (value > last) this.inc({ aggregation }, value - last);
        last = value;
      },
    });
  };
  const outcomes = ['applied', 'late', 'invalid', 'malformed'] as const;
  const lastOutcome = { applied: 0, late: 0, invalid: 0, malformed: 0 };
  new Counter({
    name: 'fstore_stream_records_total',
    help: 'Records consumed, by outcome (applied, late, invalid, malformed)',
    labelNames: ['aggregation', 'outcome'] as const,
    registers,
    collect() {
      const current = stats();
      for (const outcome of outcomes) {
        const value = current[outcome];
        if (value > lastOutcome[outcome]) this.inc({ aggregation, outcome }, value - lastOutcome[outcome]);
        lastOutcome[outcome] = value;
      }
    },
  });
  counterFrom(
    'fstore_stream_late_events_total',
    'Events behind the watermark, dropped',
    (current) => current.late,
  );
  counterFrom(
    'fstore_stream_windows_fired_total',
    'Windows closed by the watermark and written',
    (current) => current.windowsFired,
  );
  counterFrom('fstore_stream_checkpoints_total', 'Checkpoints committed', (current) => current.checkpoints);
  counterFrom(
    'fstore_stream_dead_letters_total',
    'Records sent to the dead-letter topic',
    (current) => current.deadLetters,
  );
  new Gauge({
    name: 'fstore_stream_consumer_lag_messages',
    help: 'Log end offset minus next offset, per partition',
    labelNames: ['aggregation', 'partition'] as const,
    registers,
    collect() {
      this.reset();
      for (const partition of stats().partitions)
        this.set({ aggregation, partition: String(partition.partition) }, partition.lag);
    },
  });
  new Gauge({
    name: 'fstore_stream_watermark_delay_seconds',
    help: 'Wall clock minus the partition watermark',
    labelNames: ['aggregation', 'partition'] as const,
    registers,
    collect() {
      this.reset();
      for (const partition of stats().partitions)
        if (partition.watermarkDelayMs !== null)
          this.set(
            { aggregation, partition: String(partition.partition) },
            partition.watermarkDelayMs / 1000,
          );
    },
  });
  new Gauge({
    name: 'fstore_stream_last_checkpoint_duration_seconds',
    help: 'Duration of the latest checkpoint',
    labelNames: ['aggregation'] as const,
    registers,
    collect() {
      this.set({ aggregation }, stats().lastCheckpointMs / 1000);
    },
  });
}

/**
 * The checkpoint-duration histogram (fed by the runner's onCheckpoint) and the window delay
 * (window end → online write) p50 / p99 over each scrape interval, from the runner's
 * per-millisecond histogram.
 */
export function registerStreamTimings(
  registry: Registry,
  aggregation: string,
  delays: () => Uint32Array,
  quantile: (histogram: Uint32Array, q: number) => number | null,
): (durationMs: number) => void {
  const checkpoints = new Histogram({
    name: 'fstore_stream_checkpoint_duration_seconds',
    help: 'Checkpoint duration (window state and offsets in one transaction)',
    labelNames: ['aggregation'] as const,
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  let previous: Uint32Array | undefined;
  let interval: Uint32Array | undefined;
  const sinceLastScrape = () => {
    const current = delays().slice();
    const difference = current.slice();
    if (previous)
      for (let bucket = 0; bucket < difference.length; bucket++) difference[bucket]! -= previous[bucket]!;
    previous = current;
    return difference;
  };
  for (const [q, name] of [
    [0.5, 'fstore_stream_window_delay_p50_seconds'],
    [0.99, 'fstore_stream_window_delay_p99_seconds'],
  ] as const)
    new Gauge({
      name,
      help: `Window end to online write, p${q * 100} of the windows fired since the previous scrape`,
      labelNames: ['aggregation'] as const,
      registers: [registry],
      collect() {
        // The p50 gauge is collected first: it takes the interval, the p99 reads the same one.
        if (q === 0.5) interval = sinceLastScrape();
        const value = interval ? quantile(interval, q) : null;
        if (value !== null) this.set({ aggregation }, value / 1000);
      },
    });
  return (durationMs) => checkpoints.observe({ aggregation }, durationMs / 1000);
}
