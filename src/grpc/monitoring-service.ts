import type { MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import {
  DriftLevel,
  type FeatureDriftSchema,
  type FeatureProfileSummarySchema,
  MonitoringService,
  ProfileKind,
  type ProfileSourceSchema,
  type ProfileSource as ProtoProfileSource,
  type SummaryOptions as ProtoSummaryOptions,
  type ReferenceProfileSchema,
} from '../../gen/fstore/v1/monitoring_pb.js';
import { FStoreError, invalidArgument } from '../domain/errors.js';
import { validateLookupName, validateVersion } from '../domain/input-limits.js';
import {
  type FeatureProfile,
  type SummaryOptions,
  summarizeProfile,
} from '../domain/profile/feature-profile.js';
import { validateName } from '../domain/registry-rules.js';
import type { ProfileSourceDescription, ReferenceProfileInfo } from '../ports/profile-store.js';
import type { MonitoringService as Monitoring, ProfileSource } from '../serving/monitoring.js';
import type { ServiceHandlers } from './server.js';

/** MonitoringService over the monitoring core: protobuf in, domain call, protobuf out. */

type SummaryMessage = MessageInitShape<typeof FeatureProfileSummarySchema>;

function sourceFromProto(
  source: ProtoProfileSource | undefined,
  field: string,
  allowed: readonly ProfileSource['kind'][],
): ProfileSource {
  const value = source?.source;
  const kinds = allowed.join(' or ');
  if (!value || value.case === undefined) throw invalidArgument(field, `a source is required (${kinds})`);
  const kind = value.case === 'offline' ? 'offline' : value.case === 'served' ? 'served' : 'saved';
  if (!allowed.includes(kind))
    throw invalidArgument(`${field}.${value.case}`, `is not allowed here (${kinds})`);
  if (value.case === 'offline')
    return {
      kind: 'offline',
      range: { startMicros: Number(value.value.startTime), endMicros: Number(value.value.endTime) },
    };
  if (value.case === 'served') return { kind: 'served' };
  if (value.value.name === '') throw invalidArgument(`${field}.saved.name`, 'is required');
  validateLookupName(`${field}.saved.name`, value.value.name);
  validateVersion(`${field}.saved.version`, value.value.version);
  return { kind: 'saved', name: value.value.name, version: value.value.version };
}

function sourceDescriptionToProto(
  source: ProfileSourceDescription,
): MessageInitShape<typeof ProfileSourceSchema> {
  if ('offline' in source)
    return {
      source: {
        case: 'offline',
        value: { startTime: BigInt(source.offline.startMicros), endTime: BigInt(source.offline.endMicros) },
      },
    };
  return { source: { case: 'served', value: {} } };
}

function summaryOptionsFromProto(options: ProtoSummaryOptions | undefined): SummaryOptions {
  if (!options) return {};
  return {
    ...(options.histogramBins !== 0 ? { histogramBins: options.histogramBins } : {}),
    ...(options.topK !== 0 ? { topK: options.topK } : {}),
    ...(options.quantiles.length > 0 ? { quantiles: [...options.quantiles] } : {}),
  };
}

export function summaryToProto(
  feature: string,
  profile: FeatureProfile,
  options: SummaryOptions,
): SummaryMessage {
  const summary = summarizeProfile(profile, options);
  const common = {
    feature,
    count: BigInt(summary.count),
    nullCount: BigInt(summary.nullCount),
    nullRate: summary.nullRate,
  };
  if (summary.kind === 'numeric')
    return {
      ...common,
      kind: ProfileKind.NUMERIC,
      mean: summary.mean,
      std: summary.stdPopulation,
      stdSample: summary.stdSample,
      min: summary.min,
      max: summary.max,
      quantiles: summary.quantiles.map(({ q, value }) => ({ q, value })),
      histogram: {
        edges: [...summary.histogram.edges],
        counts: summary.histogram.counts.map((count) => BigInt(count)),
      },
      nonFiniteCount: BigInt(summary.nonFiniteCount),
      relativeAccuracy: summary.relativeAccuracy,
    };
  return {
    ...common,
    kind: ProfileKind.CATEGORICAL,
    topK: summary.topK.map(({ value, count, fraction }) => ({ value, count: BigInt(count), fraction })),
    distinctCount: BigInt(summary.distinctCount),
    distinctExact: summary.distinctExact,
    frequencyErrorBound: BigInt(summary.frequencyErrorBound),
  };
}

function referenceToProto(
  info: ReferenceProfileInfo,
  profiles: ReadonlyMap<string, FeatureProfile> | undefined,
  options: SummaryOptions,
): MessageInitShape<typeof ReferenceProfileSchema> {
  return {
    name: info.name,
    version: info.version,
    featureView: info.featureView,
    viewVersion: info.viewVersion,
    source: sourceDescriptionToProto(info.source),
    description: info.description,
    createdAt: timestampFromDate(info.createdAt),
    rows: BigInt(info.rows),
    profiles: profiles
      ? [...profiles].map(([feature, profile]) => summaryToProto(feature, profile, options))
      : [],
  };
}

const levels = { ok: DriftLevel.OK, warn: DriftLevel.WARN, alert: DriftLevel.ALERT } as const;

export function createMonitoringServiceHandlers(
  monitoring: Monitoring,
): ServiceHandlers<typeof MonitoringService> {
  const project = (name: string) => {
    validateName('project', name);
    return name;
  };
  return {
    async computeProfile(request, { signal }) {
      const options = summaryOptionsFromProto(request.options);
      const profiled = await monitoring.profile(
        project(request.project),
        request.featureView,
        request.features,
        sourceFromProto(request.source, 'source', ['offline', 'served']),
        signal,
      );
      return {
        featureView: profiled.view.name,
        viewVersion: profiled.view.version,
        rows: BigInt(profiled.rows),
        latestEventTime:
          profiled.latestEventMicros === undefined ? undefined : BigInt(profiled.latestEventMicros),
        profiles: [...profiled.profiles].map(([feature, profile]) =>
          summaryToProto(feature, profile, options),
        ),
      };
    },

    async saveReferenceProfile(request, { signal }) {
      const saved = await monitoring.saveReference(
        {
          project: project(request.project),
          name: request.name,
          featureView: request.featureView,
          features: request.features,
          source: sourceFromProto(request.source, 'source', ['offline', 'served']),
          description: request.description,
        },
        signal,
      );
      return { profile: referenceToProto(saved.info, saved.profiles, {}) };
    },

    async getReferenceProfile(request) {
      if (request.name === '') throw invalidArgument('name', 'is required');
      validateLookupName('name', request.name);
      validateVersion('version', request.version);
      const stored = await monitoring.getReference(project(request.project), request.name, request.version);
      return {
        profile: referenceToProto(stored.info, stored.profiles, summaryOptionsFromProto(request.options)),
      };
    },

    async listReferenceProfiles(request) {
      validateLookupName('feature_view', request.featureView);
      const infos = await monitoring.listReferences(
        project(request.project),
        request.featureView || undefined,
      );
      return { profiles: infos.map((info) => referenceToProto(info, undefined, {})) };
    },

    async deleteReferenceProfile(request) {
      if (request.name === '') throw invalidArgument('name', 'is required');
      validateLookupName('name', request.name);
      await monitoring.deleteReference(project(request.project), request.name);
      return {};
    },

    async getDriftReport(request, { signal }) {
      const options = request.options;
      const report = await monitoring.driftReport(
        {
          project: project(request.project),
          featureView: request.featureView,
          features: request.features,
          reference: sourceFromProto(request.reference, 'reference', ['saved', 'offline']),
          current: sourceFromProto(request.current, 'current', ['offline', 'served']),
          options: {
            ...(options && options.bins !== 0 ? { bins: options.bins } : {}),
            ...(options && options.epsilon !== 0 ? { epsilon: options.epsilon } : {}),
            ...(options?.psiWarn !== undefined ? { psiWarn: options.psiWarn } : {}),
            ...(options?.psiAlert !== undefined ? { psiAlert: options.psiAlert } : {}),
          },
        },
        signal,
      );
      const summaryOptions = summaryOptionsFromProto(request.summaryOptions);
      let worst: DriftLevel = DriftLevel.OK;
      const features = report.features.map((outcome): MessageInitShape<typeof FeatureDriftSchema> => {
        // A feature without measures fails the call: the report would hide that it saw nothing.
        if (outcome.drift instanceof FStoreError) throw outcome.drift;
        const drift = outcome.drift;
        const level = levels[drift.psiLevel];
        if (level > worst) worst = level;
        return {
          feature: outcome.feature,
          kind: drift.kind === 'numeric' ? ProfileKind.NUMERIC : ProfileKind.CATEGORICAL,
          psi: drift.psi,
          level,
          psiWarn: outcome.psiWarn,
          psiAlert: outcome.psiAlert,
          kolmogorovSmirnov: drift.ks
            ? { statistic: drift.ks.statistic, pValue: drift.ks.pValue }
            : undefined,
          jensenShannonDistance: drift.jensenShannon,
          chiSquare: drift.chiSquare
            ? {
                statistic: drift.chiSquare.statistic,
                degreesOfFreedom: drift.chiSquare.degreesOfFreedom,
                pValue: drift.chiSquare.pValue,
              }
            : undefined,
          reference: summaryToProto(outcome.feature, outcome.reference, summaryOptions),
          current: summaryToProto(outcome.feature, outcome.current, summaryOptions),
        };
      });
      return { featureView: report.view.name, level: worst, features };
    },

    async getDataQualityReport(request, { signal }) {
      if (!request.range) throw invalidArgument('range', 'is required');
      const report = await monitoring.dataQualityReport(
        project(request.project),
        request.featureView,
        { startMicros: Number(request.range.startTime), endMicros: Number(request.range.endTime) },
        signal,
      );
      return {
        featureView: report.view.name,
        rows: BigInt(report.rows),
        latestEventTime:
          report.latestEventMicros === undefined ? undefined : BigInt(report.latestEventMicros),
        violations: report.violations.map((violation) => ({
          feature: violation.feature,
          rule: violation.rule,
          violations: BigInt(violation.violations),
          detail: violation.detail,
        })),
      };
    },
  };
}

export { MonitoringService };
