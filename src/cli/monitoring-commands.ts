import { type MessageInitShape, toJsonString } from '@bufbuild/protobuf';
import type { Command } from 'commander';
import {
  ComputeProfileResponseSchema,
  DriftLevel,
  type FeatureProfileSummary,
  GetDataQualityReportResponseSchema,
  GetDriftReportResponseSchema,
  ListReferenceProfilesResponseSchema,
  MonitoringService,
  ProfileKind,
  type ProfileSourceSchema,
  SaveReferenceProfileResponseSchema,
} from '../../gen/fstore/v1/monitoring_pb.js';
import { configDefaults } from '../config/config.js';
import { parseTimestampMicros } from '../domain/timestamps.js';
import type { ServiceClient } from '../grpc/client.js';
import { type ConnectionFlags, runWithClient } from './connection.js';

/**
 * `fstore profile`, `fstore profiles`, `fstore drift` and `fstore quality`: MonitoringService
 * from the command line. Human-readable tables by default, the protobuf JSON form with --json.
 * `fstore drift --fail-on warn|alert` exits with 3 when a feature reaches that level, for
 * pipelines that gate on drift.
 */

type Source = MessageInitShape<typeof ProfileSourceSchema>;

const defaultAddress = `localhost:${configDefaults.grpcPort}`;

function rangeSource(start: string | undefined, end: string | undefined, what: string): Source {
  if (start === undefined || end === undefined)
    throw new Error(`${what}: give both a start and an end (ISO 8601 or integer microseconds)`);
  return {
    source: {
      case: 'offline',
      value: { startTime: BigInt(parseTimestampMicros(start)), endTime: BigInt(parseTimestampMicros(end)) },
    },
  };
}

/** "name" or "name@version". */
function savedSource(text: string): Source {
  const at = text.lastIndexOf('@');
  const name = at > 0 ? text.slice(0, at) : text;
  const version = at > 0 ? Number(text.slice(at + 1)) : 0;
  if (!Number.isInteger(version) || version < 0)
    throw new Error(`--reference ${text}: the version after @ must be a whole number`);
  return { source: { case: 'saved', value: { name, version } } };
}

const servedSource: Source = { source: { case: 'served', value: {} } };

const number = (value: number | undefined, digits = 4) =>
  value === undefined
    ? '-'
    : Math.abs(value) >= 1e6 || (value !== 0 && Math.abs(value) < 1e-3)
      ? value.toExponential(3)
      : value.toFixed(digits);

function describeSummary(summary: FeatureProfileSummary): string {
  const head = `${summary.feature}: ${summary.count} values, ${summary.nullCount} nulls (null rate ${number(summary.nullRate)})`;
  if (summary.kind === ProfileKind.NUMERIC) {
    const quantiles = summary.quantiles
      .map((quantile) => `q${quantile.q}=${number(quantile.value)}`)
      .join(' ');
    return `${head}\n  mean ${number(summary.mean)}  std ${number(summary.std)}  min ${number(summary.min)}  max ${number(summary.max)}\n  ${quantiles}`;
  }
  const top = summary.topK
    .map((category) => `${JSON.stringify(category.value)} ${category.count}`)
    .join(', ');
  return `${head}\n  ${summary.distinctCount}${summary.distinctExact ? '' : ' (estimated)'} distinct; top: ${top}`;
}

const levelName: Record<DriftLevel, string> = {
  [DriftLevel.UNSPECIFIED]: '?',
  [DriftLevel.OK]: 'ok',
  [DriftLevel.WARN]: 'WARN',
  [DriftLevel.ALERT]: 'ALERT',
};

const run = (
  name: string,
  flags: ConnectionFlags,
  work: (client: ServiceClient<typeof MonitoringService>) => Promise<void>,
) => runWithClient(name, MonitoringService, flags, work);

export function addMonitoringCommands(program: Command): void {
  program
    .command('profile')
    .description(
      'profile features of a view over its offline rows of a time range, or over served values; --save stores it as a reference',
    )
    .requiredOption('--project <project>', 'project')
    .requiredOption('--view <name>', 'feature view')
    .option('--feature <name...>', 'features (default: every feature that can be profiled)')
    .option('--start <time>', 'event times from (inclusive): ISO 8601 or integer microseconds')
    .option('--end <time>', 'event times until (exclusive)')
    .option(
      '--served',
      'profile the values this server sampled from its responses (FSTORE_SERVED_SAMPLE_RATE)',
      false,
    )
    .option('--save <name>', 'store the profile as the next version of this reference profile')
    .option('--description <text>', 'description stored with --save', '')
    .option('--json', 'print the response as protobuf JSON', false)
    .option('--address <host:port>', 'fstore server', defaultAddress)
    .action(
      (flags: {
        project: string;
        view: string;
        feature?: string[];
        start?: string;
        end?: string;
        served: boolean;
        save?: string;
        description: string;
        json: boolean;
        address: string;
      }) =>
        run('profile', flags, async (client) => {
          const source = flags.served ? servedSource : rangeSource(flags.start, flags.end, '--start/--end');
          if (flags.save !== undefined) {
            const response = await client.saveReferenceProfile({
              project: flags.project,
              name: flags.save,
              featureView: flags.view,
              features: flags.feature ?? [],
              source,
              description: flags.description,
            });
            if (flags.json)
              process.stdout.write(`${toJsonString(SaveReferenceProfileResponseSchema, response)}\n`);
            else {
              const profile = response.profile;
              process.stdout.write(
                `saved reference profile ${profile?.name} version ${profile?.version} (${profile?.rows} rows)\n${(profile?.profiles ?? []).map(describeSummary).join('\n')}\n`,
              );
            }
            return;
          }
          const response = await client.computeProfile({
            project: flags.project,
            featureView: flags.view,
            features: flags.feature ?? [],
            source,
          });
          if (flags.json) process.stdout.write(`${toJsonString(ComputeProfileResponseSchema, response)}\n`);
          else
            process.stdout.write(
              `${response.rows} rows\n${response.profiles.map(describeSummary).join('\n')}\n`,
            );
        }),
    );

  program
    .command('profiles')
    .description('list saved reference profiles (latest version of each name)')
    .requiredOption('--project <project>', 'project')
    .option('--view <name>', 'only the profiles of this feature view')
    .option('--json', 'print the response as protobuf JSON', false)
    .option('--address <host:port>', 'fstore server', defaultAddress)
    .action((flags: { project: string; view?: string; json: boolean; address: string }) =>
      run('profiles', flags, async (client) => {
        const response = await client.listReferenceProfiles({
          project: flags.project,
          featureView: flags.view ?? '',
        });
        if (flags.json)
          process.stdout.write(`${toJsonString(ListReferenceProfilesResponseSchema, response)}\n`);
        else
          for (const profile of response.profiles)
            process.stdout.write(
              `${profile.name} v${profile.version}  ${profile.featureView} v${profile.viewVersion}  ${profile.rows} rows  ${profile.description}\n`,
            );
      }),
    );

  program
    .command('drift')
    .description(
      'compare current data of a view with a reference: PSI, Kolmogorov–Smirnov, Jensen–Shannon, chi-square',
    )
    .requiredOption('--project <project>', 'project')
    .requiredOption('--view <name>', 'feature view')
    .option('--feature <name...>', 'features (default: every feature of the reference)')
    .option('--reference <name[@version]>', 'a saved reference profile (default: its latest version)')
    .option('--reference-start <time>', 'or the offline rows from this event time (inclusive) ...')
    .option('--reference-end <time>', '... until this one (exclusive)')
    .option('--start <time>', 'current data: offline rows from this event time (inclusive) ...')
    .option('--end <time>', '... until this one (exclusive)')
    .option('--served', 'current data: the values this server sampled from its responses', false)
    .option('--bins <n>', 'PSI / Jensen–Shannon bins at the reference quantiles (default 10)')
    .option('--psi-warn <x>', 'PSI warn band for every feature (default: per feature, else 0.1)')
    .option('--psi-alert <x>', 'PSI alert band for every feature (default: per feature, else 0.25)')
    .option('--fail-on <level>', 'exit with 3 when a feature reaches this level: warn or alert')
    .option('--json', 'print the response as protobuf JSON', false)
    .option('--address <host:port>', 'fstore server', defaultAddress)
    .action(
      (flags: {
        project: string;
        view: string;
        feature?: string[];
        reference?: string;
        referenceStart?: string;
        referenceEnd?: string;
        start?: string;
        end?: string;
        served: boolean;
        bins?: string;
        psiWarn?: string;
        psiAlert?: string;
        failOn?: string;
        json: boolean;
        address: string;
      }) =>
        run('drift', flags, async (client) => {
          if (flags.failOn !== undefined && flags.failOn !== 'warn' && flags.failOn !== 'alert')
            throw new Error(`--fail-on ${flags.failOn}: give warn or alert`);
          const reference =
            flags.reference !== undefined
              ? savedSource(flags.reference)
              : rangeSource(
                  flags.referenceStart,
                  flags.referenceEnd,
                  '--reference (or --reference-start/--reference-end)',
                );
          const current = flags.served
            ? servedSource
            : rangeSource(flags.start, flags.end, '--start/--end (or --served)');
          const response = await client.getDriftReport({
            project: flags.project,
            featureView: flags.view,
            features: flags.feature ?? [],
            reference,
            current,
            options: {
              bins: flags.bins === undefined ? 0 : Number(flags.bins),
              ...(flags.psiWarn !== undefined ? { psiWarn: Number(flags.psiWarn) } : {}),
              ...(flags.psiAlert !== undefined ? { psiAlert: Number(flags.psiAlert) } : {}),
            },
          });
          if (flags.json) process.stdout.write(`${toJsonString(GetDriftReportResponseSchema, response)}\n`);
          else {
            process.stdout.write(
              'feature  level  psi  ks_statistic  ks_p_value  js_distance  chi2_p_value  reference_n  current_n\n',
            );
            for (const feature of response.features)
              process.stdout.write(
                `${feature.feature}  ${levelName[feature.level]}  ${number(feature.psi)}  ${number(feature.kolmogorovSmirnov?.statistic)}  ${number(feature.kolmogorovSmirnov?.pValue)}  ${number(feature.jensenShannonDistance)}  ${number(feature.chiSquare?.pValue)}  ${feature.reference?.count ?? 0n}  ${feature.current?.count ?? 0n}\n`,
              );
            process.stdout.write(`overall: ${levelName[response.level]}\n`);
          }
          const threshold =
            flags.failOn === 'warn'
              ? DriftLevel.WARN
              : flags.failOn === 'alert'
                ? DriftLevel.ALERT
                : undefined;
          if (threshold !== undefined && response.level >= threshold) process.exitCode = 3;
        }),
    );

  program
    .command('quality')
    .description(
      "check a view's data-quality rules (range, allowed values, max null rate, freshness) on its offline rows of a time range",
    )
    .requiredOption('--project <project>', 'project')
    .requiredOption('--view <name>', 'feature view')
    .requiredOption('--start <time>', 'event times from (inclusive): ISO 8601 or integer microseconds')
    .requiredOption('--end <time>', 'event times until (exclusive)')
    .option('--json', 'print the response as protobuf JSON', false)
    .option('--address <host:port>', 'fstore server', defaultAddress)
    .action(
      (flags: {
        project: string;
        view: string;
        start: string;
        end: string;
        json: boolean;
        address: string;
      }) =>
        run('quality', flags, async (client) => {
          const response = await client.getDataQualityReport({
            project: flags.project,
            featureView: flags.view,
            range: {
              startTime: BigInt(parseTimestampMicros(flags.start)),
              endTime: BigInt(parseTimestampMicros(flags.end)),
            },
          });
          if (flags.json)
            process.stdout.write(`${toJsonString(GetDataQualityReportResponseSchema, response)}\n`);
          else {
            process.stdout.write(`${response.rows} rows; ${response.violations.length} rules broken\n`);
            for (const violation of response.violations)
              process.stdout.write(
                `${violation.feature || '(view)'}  ${violation.rule}  ${violation.violations}  ${violation.detail}\n`,
              );
          }
          if (response.violations.length > 0) process.exitCode = 3;
        }),
    );
}
