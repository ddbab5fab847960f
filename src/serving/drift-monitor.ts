import { FStoreError } from '../domain/errors.js';
import type { FeatureView } from '../domain/model.js';
import type { MonitoringService } from './monitoring.js';
import type { RegistryCache } from './registry-cache.js';

/**
 * The scheduled drift check (DESIGN §4): every view with a drift monitor is checked every
 * `interval`: its offline rows of the last `window` are profiled and compared with the latest
 * version of its reference profile, and its data-quality rules are judged on the same rows. The
 * figures go to the sink (Prometheus gauges); a feature whose PSI crosses into a higher band is
 * logged as an alert event, and its return below the warn band as a recovery.
 */

export type DriftLevelName = 'ok' | 'warn' | 'alert';

/** Where the check's figures go; the composition root backs it with Prometheus metrics. */
export interface DriftCheckSink {
  recordDrift(sample: {
    readonly project: string;
    readonly view: string;
    readonly feature: string;
    readonly psi: number;
    readonly ksStatistic: number | undefined;
    readonly jensenShannon: number;
    readonly chiSquarePValue: number | undefined;
    readonly level: DriftLevelName;
  }): void;
  /** A feature's PSI crossed into a higher band. */
  recordAlert(alert: {
    readonly project: string;
    readonly view: string;
    readonly feature: string;
    readonly level: 'warn' | 'alert';
  }): void;
  /** Rule breaches found in the checked window (a gauge: the latest window's count). */
  recordViolations(violations: {
    readonly project: string;
    readonly view: string;
    readonly feature: string;
    readonly rule: string;
    readonly count: number;
  }): void;
  observeCheck(check: {
    readonly project: string;
    readonly view: string;
    readonly seconds: number;
    readonly ok: boolean;
  }): void;
  /** Age of the view's newest offline event at the check, seconds (undefined: no rows in the window). */
  setLastEventAge(age: {
    readonly project: string;
    readonly view: string;
    readonly seconds: number | undefined;
  }): void;
}

export interface DriftMonitorLogger {
  info(object: object, message: string): void;
  warn(object: object, message: string): void;
}

export interface DriftMonitorOptions {
  /** How often due checks are looked for. */
  readonly tickMs: number;
  /** Clock in milliseconds; tests pin it. */
  readonly nowMs?: () => number;
}

interface MonitorState {
  lastStartMs: number;
  running: Promise<void> | undefined;
  levels: Map<string, DriftLevelName>;
}

const rank: Record<DriftLevelName, number> = { ok: 0, warn: 1, alert: 2 };

export class DriftMonitor {
  readonly #states = new Map<string, MonitorState>();
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;
  #stopping = false;

  constructor(
    private readonly registry: RegistryCache,
    private readonly monitoring: MonitoringService,
    private readonly sink: DriftCheckSink,
    private readonly logger: DriftMonitorLogger,
    private readonly options: DriftMonitorOptions,
  ) {
    this.#now = options.nowMs ?? Date.now;
  }

  start(): void {
    this.#timer = setInterval(() => this.tick(), this.options.tickMs);
    this.#timer.unref();
  }

  /** Starts every check that is due (and not already running); returns when they end. */
  tick(): Promise<void> {
    if (this.#stopping || !this.registry.loaded) return Promise.resolve();
    const started: Promise<void>[] = [];
    const now = this.#now();
    for (const { project, view } of this.registry.views()) {
      const monitor = view.driftMonitor;
      if (!monitor) continue;
      const id = `${project}\u0000${view.name}`;
      let state = this.#states.get(id);
      if (!state) {
        state = { lastStartMs: -Infinity, running: undefined, levels: new Map() };
        this.#states.set(id, state);
      }
      if (state.running || now - state.lastStartMs < monitor.intervalMs) continue;
      state.lastStartMs = now;
      const running = this.check(project, view, now, state).finally(() => {
        (state as MonitorState).running = undefined;
      });
      state.running = running;
      started.push(running);
    }
    return Promise.all(started).then(() => {});
  }

  async check(project: string, view: FeatureView, nowMs: number, state: MonitorState): Promise<void> {
    const monitor = view.driftMonitor;
    if (!monitor) return;
    const started = performance.now();
    const range = { startMicros: (nowMs - monitor.windowMs) * 1000, endMicros: nowMs * 1000 };
    const where = { project, view: view.name, referenceProfile: monitor.referenceProfile };
    let ok = true;
    try {
      const report = await this.monitoring.driftReport({
        project,
        featureView: view.name,
        features: [],
        reference: { kind: 'saved', name: monitor.referenceProfile, version: 0 },
        current: { kind: 'offline', range },
        options: {},
      });
      for (const outcome of report.features) {
        if (outcome.drift instanceof FStoreError) {
          ok = false;
          this.logger.warn(
            { ...where, feature: outcome.feature, err: outcome.drift },
            'drift check: no measures for a feature',
          );
          continue;
        }
        const drift = outcome.drift;
        const level = drift.psiLevel;
        this.sink.recordDrift({
          project,
          view: view.name,
          feature: outcome.feature,
          psi: drift.psi,
          ksStatistic: drift.ks?.statistic,
          jensenShannon: drift.jensenShannon,
          chiSquarePValue: drift.chiSquare?.pValue,
          level,
        });
        const previous = state.levels.get(outcome.feature) ?? 'ok';
        state.levels.set(outcome.feature, level);
        const details = {
          ...where,
          event: 'drift_alert',
          feature: outcome.feature,
          level,
          previousLevel: previous,
          psi: drift.psi,
          psiWarn: outcome.psiWarn,
          psiAlert: outcome.psiAlert,
          ...(drift.ks ? { ksStatistic: drift.ks.statistic, ksPValue: drift.ks.pValue } : {}),
          ...(drift.chiSquare ? { chiSquarePValue: drift.chiSquare.pValue } : {}),
          jensenShannon: drift.jensenShannon,
          windowStartMicros: range.startMicros,
          windowEndMicros: range.endMicros,
        };
        if (level !== 'ok' && rank[level] > rank[previous]) {
          this.sink.recordAlert({ project, view: view.name, feature: outcome.feature, level });
          this.logger.warn(
            details,
            `drift ${level}: ${project}/${view.name}:${outcome.feature} PSI ${drift.psi.toFixed(4)}`,
          );
        } else if (level === 'ok' && previous !== 'ok')
          this.logger.info(
            { ...details, event: 'drift_recovered' },
            `drift recovered: ${project}/${view.name}:${outcome.feature}`,
          );
      }
      const quality = await this.monitoring.dataQualityReport(project, view.name, range);
      const counts = new Map<string, number>();
      for (const violation of quality.violations)
        counts.set(`${violation.feature}\u0000${violation.rule}`, violation.violations);
      // Every rule of the view gets a figure, 0 included, so a fixed breach reads 0 rather than stale.
      for (const feature of view.features) {
        const rules = [
          ...(feature.min !== undefined ? ['min'] : []),
          ...(feature.max !== undefined ? ['max'] : []),
          ...(feature.allowedValues?.length ? ['allowed_values'] : []),
          ...(feature.required ? ['required'] : []),
          ...(feature.maxNullRate !== undefined ? ['max_null_rate'] : []),
        ];
        for (const rule of rules)
          this.sink.recordViolations({
            project,
            view: view.name,
            feature: feature.name,
            rule,
            count: counts.get(`${feature.name}\u0000${rule}`) ?? 0,
          });
      }
      if (view.freshnessMs !== undefined)
        this.sink.recordViolations({
          project,
          view: view.name,
          feature: '',
          rule: 'freshness',
          count: counts.get('\u0000freshness') ?? 0,
        });
      this.sink.setLastEventAge({
        project,
        view: view.name,
        seconds:
          quality.latestEventMicros === undefined
            ? undefined
            : (nowMs * 1000 - quality.latestEventMicros) / 1e6,
      });
      if (quality.violations.length > 0)
        this.logger.warn(
          { ...where, event: 'data_quality_violations', violations: quality.violations },
          `data quality: ${quality.violations.length} rules broken in ${project}/${view.name}`,
        );
    } catch (error) {
      ok = false;
      this.logger.warn({ ...where, err: error }, 'drift check failed');
    } finally {
      this.sink.observeCheck({ project, view: view.name, seconds: (performance.now() - started) / 1000, ok });
    }
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    if (this.#timer) clearInterval(this.#timer);
    await Promise.allSettled([...this.#states.values()].map((state) => state.running));
  }
}
