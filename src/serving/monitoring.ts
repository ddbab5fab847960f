import { FStoreError, invalidArgument, notFound } from '../domain/errors.js';
import { inputLimits, validateText } from '../domain/input-limits.js';
import type { FeatureDefinition, FeatureView } from '../domain/model.js';
import { type DriftOptions, type DriftResult, validateDriftOptions } from '../domain/profile/drift.js';
import {
  decodeProfile,
  encodeProfile,
  type FeatureProfile,
  mergeProfiles,
} from '../domain/profile/feature-profile.js';
import { profileNamePattern, validateName } from '../domain/registry-rules.js';
import type { FeatureValueSegment, OfflineStore, TimeRange } from '../ports/offline-store.js';
import type {
  ProfileSourceDescription,
  ProfileStore,
  ReferenceProfileInfo,
  StoredReferenceProfile,
} from '../ports/profile-store.js';
import type { DriftTask, DriftTaskResult } from '../workers/drift-task.js';
import type { ProfileColumn, ProfileTask, ProfileTaskResult, RuleBreaches } from '../workers/profile-task.js';
import type { RegistryCache } from './registry-cache.js';
import { profileKindOf, type ServedValueSampler } from './served-sample.js';

/**
 * Feature profiles, reference profiles, drift and data-quality reports (DESIGN §4): the core of
 * MonitoringService and of the scheduled drift check. The CPU work (decoding offline rows into
 * sketches, the drift statistics) runs in the worker pool; this class reads, fans out, merges.
 */

export interface StatisticsWorkers {
  runProfile(task: ProfileTask, options: { signal?: AbortSignal }): Promise<ProfileTaskResult>;
  runDrift(task: DriftTask, options: { signal?: AbortSignal }): Promise<DriftTaskResult>;
  /** Tasks in flight per call: enough to keep every worker busy while the next segment is read. */
  readonly parallelism: number;
}

export type ProfileSource =
  | { readonly kind: 'offline'; readonly range: TimeRange }
  | { readonly kind: 'served' }
  | { readonly kind: 'saved'; readonly name: string; readonly version: number };

export interface ProfiledFeatures {
  readonly view: FeatureView;
  /** Rows read (offline), or the largest sample's values and nulls (served). */
  readonly rows: number;
  /** The newest event time of the rows read, microseconds; undefined without rows or for samples. */
  readonly latestEventMicros: number | undefined;
  /** Feature name → profile, in the order asked for. */
  readonly profiles: ReadonlyMap<string, FeatureProfile>;
  /** Feature name → rows breaking its range and allowed-value rules (offline only). */
  readonly breaches: ReadonlyMap<string, RuleBreaches>;
}

export interface FeatureDriftOutcome {
  readonly feature: string;
  readonly reference: FeatureProfile;
  readonly current: FeatureProfile;
  /** The measures, or why there are none (FStoreError: an empty side, kinds that differ). */
  readonly drift: DriftResult | FStoreError;
  readonly psiWarn: number;
  readonly psiAlert: number;
}

export interface DriftReport {
  readonly view: FeatureView;
  readonly features: readonly FeatureDriftOutcome[];
}

export interface RuleViolation {
  readonly feature: string;
  readonly rule: 'min' | 'max' | 'allowed_values' | 'required' | 'max_null_rate' | 'freshness';
  readonly violations: number;
  readonly detail: string;
}

export interface DataQualityReport {
  readonly view: FeatureView;
  readonly rows: number;
  readonly latestEventMicros: number | undefined;
  readonly violations: readonly RuleViolation[];
}

export interface MonitoringOptions {
  /** Offline rows per profile task. */
  readonly segmentRows: number;
  /** Clock in microseconds since the epoch; tests pin it. */
  readonly nowMicros?: () => number;
}

export const defaultPsiBands = { warn: 0.1, alert: 0.25 } as const;

/** A ProfileSource as recorded with a saved profile. */
export function describeSource(source: ProfileSource): ProfileSourceDescription {
  if (source.kind === 'offline')
    return { offline: { startMicros: source.range.startMicros, endMicros: source.range.endMicros } };
  if (source.kind === 'served') return { served: {} };
  throw invalidArgument('source', 'a saved profile cannot be the source of another one');
}

function assertRange(range: TimeRange, field: string): void {
  for (const [bound, value] of [
    ['start_time', range.startMicros],
    ['end_time', range.endMicros],
  ] as const)
    if (!Number.isSafeInteger(value))
      throw invalidArgument(`${field}.${bound}`, `must be whole microseconds since the epoch, got ${value}`);
  if (range.startMicros >= range.endMicros)
    throw invalidArgument(field, `start_time ${range.startMicros} is not before end_time ${range.endMicros}`);
}

const formatFraction = (value: number) => Number(value.toPrecision(4)).toString();

function formatAge(micros: number): string {
  const seconds = micros / 1e6;
  if (seconds < 120) return `${formatFraction(seconds)} s`;
  if (seconds < 7200) return `${formatFraction(seconds / 60)} min`;
  return `${formatFraction(seconds / 3600)} h`;
}

export class MonitoringService {
  readonly #now: () => number;

  constructor(
    private readonly registry: RegistryCache,
    private readonly offline: OfflineStore,
    private readonly store: ProfileStore,
    private readonly workers: StatisticsWorkers,
    private readonly sampler: ServedValueSampler | undefined,
    private readonly options: MonitoringOptions,
  ) {
    this.#now = options.nowMicros ?? (() => Date.now() * 1000);
  }

  /** The current version of a view; NOT_FOUND naming it. */
  view(project: string, name: string): FeatureView {
    if (name === '') throw invalidArgument('feature_view', 'is required');
    const view = this.registry.project(project).views.get(name)?.current;
    if (!view) throw notFound(`feature view "${name}" does not exist in project "${project}"`);
    return view;
  }

  /**
   * The features to profile: those named (each must exist and be profileable), or every
   * profileable feature of the view.
   */
  features(view: FeatureView, names: readonly string[], field = 'features'): FeatureDefinition[] {
    if (names.length === 0) {
      const all = view.features.filter((feature) => profileKindOf(feature.type) !== undefined);
      if (all.length === 0)
        throw new FStoreError(
          'failed_precondition',
          `feature view "${view.name}" has no feature that can be profiled`,
        );
      return all;
    }
    const seen = new Set<string>();
    return names.map((name, index) => {
      const feature = view.features.find((candidate) => candidate.name === name);
      if (!feature)
        throw notFound(`${field}[${index}]: feature view "${view.name}" has no feature "${name}"`);
      if (!profileKindOf(feature.type))
        throw invalidArgument(
          `${field}[${index}]`,
          `feature "${name}" is of type ${feature.type}, which cannot be profiled (int64, double, float, timestamp, string and bool can)`,
        );
      if (seen.has(name)) throw invalidArgument(`${field}[${index}]`, `duplicate feature "${name}"`);
      seen.add(name);
      return feature;
    });
  }

  async profile(
    project: string,
    viewName: string,
    featureNames: readonly string[],
    source: ProfileSource,
    signal?: AbortSignal,
  ): Promise<ProfiledFeatures> {
    const view = this.view(project, viewName);
    if (source.kind === 'saved') {
      const stored = await this.store.getReferenceProfile(project, source.name, source.version);
      return this.#fromStored(view, stored, featureNames);
    }
    const features = this.features(view, featureNames);
    if (source.kind === 'served') return this.#profileServed(project, view, features, signal);
    return this.#profileOffline(view, features, source.range, signal);
  }

  async #profileOffline(
    view: FeatureView,
    features: readonly FeatureDefinition[],
    range: TimeRange,
    signal: AbortSignal | undefined,
  ): Promise<ProfiledFeatures> {
    assertRange(range, 'source.offline');
    const columns: ProfileColumn[] = features.map((feature) => ({
      type: feature.type,
      ...(feature.min !== undefined ? { min: feature.min } : {}),
      ...(feature.max !== undefined ? { max: feature.max } : {}),
      ...(feature.allowedValues ? { allowedValues: feature.allowedValues } : {}),
    }));
    const indexes = features.map((feature) => view.features.indexOf(feature));
    const merged: (FeatureProfile | undefined)[] = features.map(() => undefined);
    const breaches: RuleBreaches[] = features.map(() => ({ min: 0, max: 0, allowedValues: 0 }));
    let rows = 0;
    let latest = -Infinity;
    const take = (result: ProfileTaskResult) => {
      result.profiles.forEach((bytes, column) => {
        const profile = decodeProfile(bytes);
        const sum = merged[column];
        merged[column] = sum ? mergeProfiles(sum, profile) : profile;
        const total = breaches[column] as RuleBreaches;
        const part = result.breaches[column] as RuleBreaches;
        total.min += part.min;
        total.max += part.max;
        total.allowedValues += part.allowedValues;
      });
      if (result.latestEventMicros > latest) latest = result.latestEventMicros;
    };
    const submit = (segment: FeatureValueSegment) => {
      rows += segment.rows;
      return this.workers
        .runProfile({ kind: 'rows', bytes: segment.bytes, rows: segment.rows, columns }, { signal })
        .then(take);
    };
    const inFlight: Promise<void>[] = [];
    try {
      for await (const segment of this.offline.readFeatureValues(view, range, {
        features: indexes,
        segmentRows: this.options.segmentRows,
        signal,
      })) {
        const task = submit(segment);
        // Handled now, awaited later: a task failing while the next segment is read must not
        // count as an unhandled rejection.
        task.catch(() => {});
        inFlight.push(task);
        // Bounded: the next segment is read only when a worker can take it soon.
        if (inFlight.length >= this.workers.parallelism) await inFlight.shift();
      }
      await Promise.all(inFlight);
    } catch (error) {
      await Promise.allSettled(inFlight);
      throw error;
    }
    // No rows at all: empty profiles of the right kind, from an empty task.
    if (rows === 0) {
      const empty = await this.workers.runProfile(
        { kind: 'rows', bytes: new Uint8Array(0), rows: 0, columns },
        { signal },
      );
      take(empty);
    }
    return {
      view,
      rows,
      latestEventMicros: Number.isFinite(latest) ? latest : undefined,
      profiles: new Map(features.map((feature, column) => [feature.name, merged[column] as FeatureProfile])),
      breaches: new Map(features.map((feature, column) => [feature.name, breaches[column] as RuleBreaches])),
    };
  }

  async #profileServed(
    project: string,
    view: FeatureView,
    features: readonly FeatureDefinition[],
    signal: AbortSignal | undefined,
  ): Promise<ProfiledFeatures> {
    if (!this.sampler?.enabled)
      throw new FStoreError(
        'failed_precondition',
        'served values are not sampled on this server: set FSTORE_SERVED_SAMPLE_RATE above 0',
      );
    const columns = features.map((feature) => {
      const kind = profileKindOf(feature.type) as 'numeric' | 'categorical';
      const sample = this.sampler?.sample(project, `${view.name}:${feature.name}`);
      if (sample && sample.kind === kind) return sample;
      return kind === 'numeric'
        ? { kind, values: new Float64Array(0), nullCount: 0 }
        : { kind, values: [] as string[], nullCount: 0 };
    });
    const rows = Math.max(0, ...columns.map((column) => column.values.length + column.nullCount));
    const result = await this.workers.runProfile({ kind: 'values', columns }, { signal });
    return {
      view,
      rows,
      latestEventMicros: undefined,
      profiles: new Map(
        features.map((feature, index) => [feature.name, decodeProfile(result.profiles[index] as Uint8Array)]),
      ),
      breaches: new Map(),
    };
  }

  #fromStored(
    view: FeatureView,
    stored: StoredReferenceProfile,
    featureNames: readonly string[],
  ): ProfiledFeatures {
    if (stored.featureView !== view.name)
      throw new FStoreError(
        'failed_precondition',
        `reference profile "${stored.name}" v${stored.version} is of feature view "${stored.featureView}", not "${view.name}"`,
      );
    const names = featureNames.length > 0 ? featureNames : [...stored.profiles.keys()];
    const profiles = new Map<string, FeatureProfile>();
    names.forEach((name, index) => {
      const bytes = stored.profiles.get(name);
      if (!bytes)
        throw notFound(
          `features[${index}]: reference profile "${stored.name}" v${stored.version} has no feature "${name}"`,
        );
      profiles.set(name, decodeProfile(bytes));
    });
    return { view, rows: stored.rows, latestEventMicros: undefined, profiles, breaches: new Map() };
  }

  async saveReference(
    request: {
      readonly project: string;
      readonly name: string;
      readonly featureView: string;
      readonly features: readonly string[];
      readonly source: ProfileSource;
      readonly description: string;
    },
    signal?: AbortSignal,
  ): Promise<{ info: ReferenceProfileInfo; profiles: ReadonlyMap<string, FeatureProfile> }> {
    // Before the profiling, which reads every row of the range.
    validateName('name', request.name, profileNamePattern);
    validateText('description', request.description, inputLimits.descriptionBytes);
    const source = describeSource(request.source);
    const profiled = await this.profile(
      request.project,
      request.featureView,
      request.features,
      request.source,
      signal,
    );
    const saved = await this.store.saveReferenceProfile({
      project: request.project,
      name: request.name,
      featureView: profiled.view.name,
      viewVersion: profiled.view.version,
      source,
      description: request.description,
      rows: profiled.rows,
      profiles: new Map([...profiled.profiles].map(([name, profile]) => [name, encodeProfile(profile)])),
    });
    return { info: saved, profiles: profiled.profiles };
  }

  async getReference(
    project: string,
    name: string,
    version: number,
  ): Promise<{ info: ReferenceProfileInfo; profiles: ReadonlyMap<string, FeatureProfile> }> {
    const stored = await this.store.getReferenceProfile(project, name, version);
    const profiles = new Map([...stored.profiles].map(([feature, bytes]) => [feature, decodeProfile(bytes)]));
    return { info: stored, profiles };
  }

  listReferences(project: string, featureView: string | undefined): Promise<ReferenceProfileInfo[]> {
    this.registry.project(project);
    return this.store.listReferenceProfiles(project, featureView);
  }

  deleteReference(project: string, name: string): Promise<void> {
    return this.store.deleteReferenceProfile(project, name);
  }

  /**
   * Drift of each feature between the reference and the current data. A feature whose measures
   * cannot be computed (an empty side, kinds that differ) carries the error instead.
   */
  async driftReport(
    request: {
      readonly project: string;
      readonly featureView: string;
      readonly features: readonly string[];
      readonly reference: ProfileSource;
      readonly current: ProfileSource;
      readonly options: {
        readonly bins?: number;
        readonly epsilon?: number;
        readonly psiWarn?: number;
        readonly psiAlert?: number;
      };
    },
    signal?: AbortSignal,
  ): Promise<DriftReport> {
    if (request.current.kind === 'saved')
      throw invalidArgument('current', 'current data is offline rows or served values, not a saved profile');
    if (request.reference.kind === 'served')
      throw invalidArgument(
        'reference',
        'a reference is a saved profile or offline rows, not the served sample',
      );
    const view = this.view(request.project, request.featureView);
    const reference = await this.profile(
      request.project,
      request.featureView,
      request.features,
      request.reference,
      signal,
    );
    // The reference decides which features are compared (a saved one may hold fewer than the view).
    const names = [...reference.profiles.keys()];
    for (const name of names)
      if (!view.features.some((feature) => feature.name === name))
        throw new FStoreError(
          'failed_precondition',
          `feature "${name}" of the reference is no longer a feature of view "${view.name}"`,
        );
    const current = await this.profile(request.project, request.featureView, names, request.current, signal);
    const pairs = names.map((name) => {
      const feature = view.features.find((candidate) => candidate.name === name) as FeatureDefinition;
      const psiWarn = request.options.psiWarn ?? feature.psiWarn ?? defaultPsiBands.warn;
      const psiAlert =
        request.options.psiAlert ?? feature.psiAlert ?? Math.max(defaultPsiBands.alert, psiWarn);
      const options: DriftOptions = {
        ...(request.options.bins !== undefined ? { bins: request.options.bins } : {}),
        ...(request.options.epsilon !== undefined ? { epsilon: request.options.epsilon } : {}),
        psiWarn,
        psiAlert,
      };
      return { name, options };
    });
    // Options are checked here, once, so a bad option is the call's error rather than every feature's.
    for (const { options } of pairs) validateDriftOptions(options);
    const results = await this.workers.runDrift(
      {
        pairs: pairs.map(({ name, options }) => ({
          reference: encodeProfile(reference.profiles.get(name) as FeatureProfile),
          current: encodeProfile(current.profiles.get(name) as FeatureProfile),
          options,
        })),
      },
      { signal },
    );
    return {
      view,
      features: pairs.map(({ name, options }, index) => {
        const result = results[index];
        const drift =
          result?.ok === true
            ? result.drift
            : new FStoreError(
                (result?.code ?? 'internal') as ConstructorParameters<typeof FStoreError>[0],
                `feature "${name}": ${result?.message ?? 'no result'}`,
              );
        return {
          feature: name,
          reference: reference.profiles.get(name) as FeatureProfile,
          current: current.profiles.get(name) as FeatureProfile,
          drift,
          psiWarn: options.psiWarn as number,
          psiAlert: options.psiAlert as number,
        };
      }),
    };
  }

  /** The view's rules against its offline rows of `range` (and freshness against now). */
  async dataQualityReport(
    project: string,
    viewName: string,
    range: TimeRange,
    signal?: AbortSignal,
  ): Promise<DataQualityReport> {
    const view = this.view(project, viewName);
    const profiled = await this.#profileOffline(
      view,
      view.features.filter((feature) => profileKindOf(feature.type) !== undefined),
      range,
      signal,
    );
    const violations: RuleViolation[] = [];
    for (const feature of view.features) {
      const profile = profiled.profiles.get(feature.name);
      const breaches = profiled.breaches.get(feature.name);
      if (!profile || !breaches) continue;
      if (breaches.min > 0)
        violations.push({
          feature: feature.name,
          rule: 'min',
          violations: breaches.min,
          detail: `${breaches.min} values below ${feature.min}`,
        });
      if (breaches.max > 0)
        violations.push({
          feature: feature.name,
          rule: 'max',
          violations: breaches.max,
          detail: `${breaches.max} values above ${feature.max}`,
        });
      if (breaches.allowedValues > 0)
        violations.push({
          feature: feature.name,
          rule: 'allowed_values',
          violations: breaches.allowedValues,
          detail: `${breaches.allowedValues} values not among the ${feature.allowedValues?.length ?? 0} allowed`,
        });
      if (feature.required && profile.nullCount > 0)
        violations.push({
          feature: feature.name,
          rule: 'required',
          violations: profile.nullCount,
          detail: `${profile.nullCount} nulls`,
        });
      const total = profile.count + profile.nullCount;
      if (feature.maxNullRate !== undefined && total > 0) {
        const rate = profile.nullCount / total;
        if (rate > feature.maxNullRate)
          violations.push({
            feature: feature.name,
            rule: 'max_null_rate',
            violations: 1,
            detail: `null rate ${formatFraction(rate)} is above ${feature.maxNullRate}`,
          });
      }
    }
    if (view.freshnessMs !== undefined) {
      const limitMicros = view.freshnessMs * 1000;
      const latest = profiled.latestEventMicros;
      if (latest === undefined)
        violations.push({ feature: '', rule: 'freshness', violations: 1, detail: 'no rows in the range' });
      else if (this.#now() - latest > limitMicros)
        violations.push({
          feature: '',
          rule: 'freshness',
          violations: 1,
          detail: `the newest event is ${formatAge(this.#now() - latest)} old, more than ${formatAge(limitMicros)}`,
        });
    }
    return { view, rows: profiled.rows, latestEventMicros: profiled.latestEventMicros, violations };
  }
}
