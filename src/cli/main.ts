import cluster from 'node:cluster';
import { availableParallelism } from 'node:os';
import { Command, Option } from 'commander';
import { type Logger, pino } from 'pino';
import { AggregatorRegistry } from 'prom-client';
import { FeatureService } from '../../gen/fstore/v1/feature_service_pb.js';
import { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { tlsFilesOf } from '../app/security.js';
import { resolvePostgres, startServing } from '../app/serve.js';
import { type StreamRole, startStreamRole } from '../app/stream.js';
import {
  assertSafeListeners,
  type Config,
  type ConfigKey,
  configDefaults,
  loadConfig,
} from '../config/config.js';
import { FStoreError } from '../domain/errors.js';
import { parseTimestampMicros } from '../domain/timestamps.js';
import { startMetricsServer } from '../observability/http.js';
import { applyFile } from './apply-file.js';
import { addConnectionOptionsToClients, connect } from './connection.js';
import { type FileFormat, fileFormats, ingestFile } from './ingest-file.js';
import { addMonitoringCommands } from './monitoring-commands.js';
import { addSecurityCommands } from './security-commands.js';

/** `fstore` — the command-line entry. Flags override FSTORE_* environment variables. */

// bin/fstore.js ends the process on a signal while the sources load; from here on each command
// decides what a signal means (drain, checkpoint), so those early handlers go.
process.removeAllListeners('SIGTERM');
process.removeAllListeners('SIGINT');

const serveFlags: { flag: string; key: ConfigKey; description: string }[] = [
  {
    flag: '--host <host>',
    key: 'grpcHost',
    description: `gRPC listen address (FSTORE_GRPC_HOST, default ${configDefaults.grpcHost})`,
  },
  {
    flag: '--port <port>',
    key: 'grpcPort',
    description: `gRPC port (FSTORE_GRPC_PORT, default ${configDefaults.grpcPort})`,
  },
  {
    flag: '--processes <n|auto>',
    key: 'processes',
    description: 'serving processes sharing the port; auto = one per core (FSTORE_PROCESSES, default 1)',
  },
  {
    flag: '--redis-url <url>',
    key: 'redisUrl',
    description: 'online store Redis (FSTORE_REDIS_URL); none: in-process store',
  },
  {
    flag: '--redis-cluster-nodes <list>',
    key: 'redisClusterNodes',
    description: 'Redis Cluster seed nodes host:port,... (FSTORE_REDIS_CLUSTER_NODES)',
  },
  {
    flag: '--postgres-url <url>',
    key: 'postgresUrl',
    description: 'registry PostgreSQL (FSTORE_POSTGRES_URL); none: embedded PostgreSQL',
  },
  {
    flag: '--max-batch-rows <n>',
    key: 'maxBatchRows',
    description: `most entity rows per request (FSTORE_MAX_BATCH_ROWS, default ${configDefaults.maxBatchRows})`,
  },
  {
    flag: '--log-level <level>',
    key: 'logLevel',
    description: `log level (FSTORE_LOG_LEVEL, default ${configDefaults.logLevel})`,
  },
  {
    flag: '--metrics-host <host>',
    key: 'metricsHost',
    description: `HTTP listen address of /metrics, /healthz, /readyz (FSTORE_METRICS_HOST, default ${configDefaults.metricsHost})`,
  },
  {
    flag: '--auth <on|off>',
    key: 'auth',
    description: 'authentication and roles (FSTORE_AUTH, default off: loopback only)',
  },
  {
    flag: '--insecure',
    key: 'insecure',
    description: 'listen beyond loopback WITHOUT authentication (FSTORE_INSECURE; logged as a warning)',
  },
  {
    flag: '--metrics-port <port>',
    key: 'metricsPort',
    description: `HTTP port of /metrics, /healthz, /readyz (FSTORE_METRICS_PORT, default ${configDefaults.metricsPort})`,
  },
];

const streamFlags: { flag: string; key: ConfigKey; description: string }[] = [
  {
    flag: '--kafka-brokers <list>',
    key: 'kafkaBrokers',
    description: `Kafka bootstrap brokers host:port,... (FSTORE_KAFKA_BROKERS, default ${configDefaults.kafkaBrokers})`,
  },
  ...serveFlags.filter(({ key }) =>
    ['redisUrl', 'redisClusterNodes', 'postgresUrl', 'logLevel', 'metricsPort'].includes(key),
  ),
  {
    flag: '--checkpoint-interval-ms <ms>',
    key: 'streamCheckpointIntervalMs',
    description: `how often window state and offsets are checkpointed (FSTORE_STREAM_CHECKPOINT_INTERVAL_MS, default ${configDefaults.streamCheckpointIntervalMs})`,
  },
  {
    flag: '--concurrency <n>',
    key: 'streamConcurrency',
    description: `partitions processed at once (FSTORE_STREAM_CONCURRENCY, default ${configDefaults.streamConcurrency})`,
  },
];

/** The configuration from the environment and the command's flags (flags win). */
function configFromFlags(
  table: readonly { flag: string; key: ConfigKey }[],
  flags: Record<string, string | undefined>,
): Config {
  const overrides: Partial<Record<ConfigKey, string>> = {};
  for (const { flag, key } of table) {
    const value: unknown = flags[new Option(flag).attributeName()];
    if (value !== undefined) overrides[key] = typeof value === 'boolean' ? String(value) : String(value);
  }
  return loadConfig(process.env, overrides);
}

async function streamOneMember(
  config: Config,
  flags: Record<string, string | boolean | undefined>,
): Promise<void> {
  const logger = pino({ level: config.logLevel, base: { pid: process.pid, role: 'stream' } });
  const project = flags.project as string;
  const aggregation = flags.aggregation as string;
  const reset = Boolean(flags.reset);
  // Signals are handled from here on, not only once the member runs (until a handler is installed
  // the OS default applies: the process is killed on the spot). Told to stop while it starts, the
  // start gives up at its next step and undoes what it did (nothing half-written), and the member
  // exits 0 like one stopped while running.
  const starting = new AbortController();
  let role: Promise<StreamRole> | undefined;
  stopOnSignals(logger, 'checkpointing every partition', async () => {
    starting.abort();
    const started = await role?.catch(() => undefined);
    if (started) await started.stop();
    else logger.info({ project, aggregation }, 'stopped while starting');
  });
  logger.info({ project, aggregation, reset }, 'stream member starting');
  role = startStreamRole(
    config,
    {
      project,
      aggregation,
      groupId: flags.group as string | undefined,
      deadLetterTopic: flags.deadLetterTopic as string | undefined,
      reset,
      signal: starting.signal,
      onFatal(error) {
        logger.fatal({ err: error }, 'stream member cannot go on');
        process.exit(1);
      },
    },
    logger,
  );
  try {
    await role;
  } catch (error) {
    // Stopped by a signal while it started: the signal's handler exits once it has stopped.
    if (starting.signal.aborted) return;
    throw error;
  }
  if (!starting.signal.aborted) logger.info({ project, aggregation }, 'stream member started');
}

/** On SIGTERM or SIGINT (once): logs `what`, runs `stop`, exits 0, or 1 when it failed. */
function stopOnSignals(logger: Logger, what: string, stop: () => Promise<void>): void {
  let stopping = false;
  const onSignal = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, `shutting down: ${what}`);
    stop().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
}

function fail(error: unknown): never {
  const message =
    error instanceof FStoreError ? error.message : error instanceof Error ? error.message : String(error);
  process.stderr.write(`fstore: ${message}\n`);
  process.exit(2);
}

function processCount(config: Config): number {
  return config.processes === 'auto' ? availableParallelism() : config.processes;
}

async function serveOneProcess(config: Config): Promise<void> {
  const logger = pino({ level: config.logLevel, base: { pid: process.pid, role: 'serve' } });
  const serving = await startServing(config, logger);
  stopOnSignals(logger, 'draining in-flight calls', () => serving.stop());
}

/**
 * Several processes on one port: the primary forks workers that share the listening socket
 * (Node's cluster module hands accepted connections round-robin), so one gRPC port uses every
 * core. The primary owns the embedded PostgreSQL, if any, and restarts a worker that crashes.
 */
async function serveCluster(config: Config, count: number): Promise<void> {
  const logger = pino({ level: config.logLevel, base: { pid: process.pid, role: 'serve-primary' } });
  const postgres = await resolvePostgres(config, logger);
  const workerEnvironment = { FSTORE_POSTGRES_URL: postgres.url, FSTORE_PROCESSES: '1', FSTORE_WORKER: '1' };
  let stopping = false;
  // One process runs the scheduled drift checks, so each runs once per interval, not once per process.
  const monitors = new Set<number>();
  const fork = (monitor: boolean) => {
    const worker = cluster.fork({
      ...workerEnvironment,
      ...(monitor ? {} : { FSTORE_DRIFT_MONITOR: 'off' }),
    });
    if (monitor) monitors.add(worker.id);
  };
  // /metrics of every process, aggregated here; ready while some serving process is.
  const readyWorkers = new Set<number>();
  cluster.on('message', (worker, message: { fstoreReadiness?: boolean }) => {
    if (typeof message?.fstoreReadiness !== 'boolean') return;
    if (message.fstoreReadiness) readyWorkers.add(worker.id);
    else readyWorkers.delete(worker.id);
  });
  const tlsFiles = tlsFilesOf(config);
  const metricsServer =
    config.metrics === 'on'
      ? await startMetricsServer({
          host: config.metricsHost,
          port: config.metricsPort,
          metrics: (() => {
            const aggregator = new AggregatorRegistry();
            return async () => ({
              contentType: aggregator.contentType,
              body: await aggregator.clusterMetrics(),
            });
          })(),
          readiness: () => ({
            ready: readyWorkers.size > 0,
            checks: { servingProcesses: readyWorkers.size > 0 },
          }),
          logger,
          ...(tlsFiles ? { tls: tlsFiles } : {}),
        })
      : undefined;
  cluster.on('exit', (worker, code, signal) => {
    readyWorkers.delete(worker.id);
    const monitor = monitors.delete(worker.id);
    if (stopping) {
      if (Object.keys(cluster.workers ?? {}).length === 0)
        Promise.allSettled([postgres.stop(), metricsServer?.close()]).finally(() => process.exit(0));
      return;
    }
    logger.error({ worker: worker.process.pid, code, signal }, 'serving process exited; starting another');
    setTimeout(() => fork(monitor), 500);
  });
  for (let index = 0; index < count; index++) fork(index === 0 && config.driftMonitor === 'on');
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, processes: count }, 'shutting down serving processes');
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGTERM');
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

export function buildProgram(): Command {
  const program = new Command('fstore')
    .description('FStore: a feature store for production ML')
    .showHelpAfterError();
  const serve = program.command('serve').description('run the gRPC FeatureService and RegistryService');
  for (const { flag, description } of serveFlags) serve.addOption(new Option(flag, description));
  serve.action(async (flags: Record<string, string | undefined>) => {
    let config: Config;
    try {
      config = configFromFlags(serveFlags, flags);
      assertSafeListeners(config);
    } catch (error) {
      fail(error);
    }
    const count = processCount(config);
    try {
      if (count > 1 && cluster.isPrimary) await serveCluster(config, count);
      else await serveOneProcess(config);
    } catch (error) {
      fail(error);
    }
  });
  program
    .command('ingest')
    .description(
      'load a CSV, Parquet or Arrow IPC file into the offline store of a feature view (all rows or none)',
    )
    .requiredOption('--project <project>', 'project of the view')
    .requiredOption('--view <name>', 'feature view the rows belong to')
    .requiredOption(
      '--file <path>',
      'columns: join keys, event_timestamp, [created_timestamp], features (.csv with a header row, .parquet, .arrow/.feather/.ipc/.arrows)',
    )
    .addOption(
      new Option('--format <format>', 'file format (default: from the extension)').choices(fileFormats),
    )
    .option('--address <host:port>', 'fstore server', `localhost:${configDefaults.grpcPort}`)
    .option('--chunk-rows <n>', 'rows per streamed chunk', '1000')
    .option('--write-online', 'also write the latest row per entity to the online store after the commit')
    .action(
      async (flags: {
        project: string;
        view: string;
        file: string;
        format?: FileFormat;
        address: string;
        chunkRows: string;
        writeOnline?: boolean;
      }) => {
        const chunkRows = Number(flags.chunkRows);
        if (!Number.isInteger(chunkRows) || chunkRows < 1)
          fail(new Error(`--chunk-rows: "${flags.chunkRows}" is not a positive integer`));
        const registry = connect(RegistryService, flags);
        const features = connect(FeatureService, flags);
        try {
          const started = Date.now();
          const { rows, writtenOnline, staleOnline } = await ingestFile(
            { registry, features },
            {
              project: flags.project,
              featureView: flags.view,
              file: flags.file,
              format: flags.format,
              chunkRows,
              writeOnline: flags.writeOnline ?? false,
            },
          );
          const seconds = (Date.now() - started) / 1000;
          process.stdout.write(
            `ingested ${rows} rows into ${flags.project}/${flags.view} in ${seconds.toFixed(1)} s${
              flags.writeOnline ? `; online: ${writtenOnline} written, ${staleOnline} stale` : ''
            }\n`,
          );
        } catch (error) {
          // After the commit only the online write can fail; the server's message says so.
          const message = error instanceof Error ? error.message : String(error);
          process.stderr.write(
            `fstore ingest: ${message}${/ARE committed/.test(message) ? '' : '; nothing was stored'}\n`,
          );
          process.exitCode = 1;
        } finally {
          registry.close();
          features.close();
        }
      },
    );
  program
    .command('apply')
    .description(
      'apply registry objects declared in a YAML file (Entity, FeatureView, FeatureSet, StreamAggregation)',
    )
    .requiredOption(
      '--file <path>',
      'YAML documents of kind, project, [force], spec (the object in protobuf JSON form)',
    )
    .option('--address <host:port>', 'fstore server', `localhost:${configDefaults.grpcPort}`)
    .action(async (flags: { file: string; address: string }) => {
      const registry = connect(RegistryService, flags);
      try {
        for (const applied of await applyFile(registry, flags.file))
          process.stdout.write(`${applied.kind} ${applied.name}: ${applied.outcome}\n`);
      } catch (error) {
        process.stderr.write(`fstore apply: ${error instanceof Error ? error.message : String(error)}\n`);
        process.exitCode = 1;
      } finally {
        registry.close();
      }
    });
  const stream = program
    .command('stream')
    .description('run one consumer-group member computing a stream aggregation from Kafka')
    .requiredOption('--project <project>', 'project')
    .requiredOption('--aggregation <name>', 'stream aggregation')
    .option('--group <id>', 'consumer group (default fstore.<project>.<aggregation>)')
    .option(
      '--dead-letter-topic <topic>',
      'where malformed, invalid and late events go (default <topic>.dlq)',
    )
    .option(
      '--reset',
      "delete the aggregation's checkpoints first: every partition is recomputed from the start of its log (after a definition change)",
    );
  for (const { flag, description } of streamFlags) stream.addOption(new Option(flag, description));
  stream.action(async (flags: Record<string, string | undefined>) => {
    try {
      await streamOneMember(configFromFlags(streamFlags, flags), flags);
    } catch (error) {
      fail(error);
    }
  });
  program
    .command('materialize')
    .description('copy the latest offline row per entity of a time range to the online store')
    .requiredOption('--project <project>', 'project')
    .option('--view <name...>', 'feature views (default: every online view of the project)')
    .option('--start <time>', 'event times from (inclusive): ISO 8601 or integer microseconds', '0')
    .option('--end <time>', 'event times until (exclusive): ISO 8601 or integer microseconds; default now')
    .option('--incremental', 'start each view where its previous run ended', false)
    .option('--address <host:port>', 'fstore server', `localhost:${configDefaults.grpcPort}`)
    .action(
      async (flags: {
        project: string;
        view?: string[];
        start: string;
        end?: string;
        incremental: boolean;
        address: string;
      }) => {
        const features = connect(FeatureService, flags);
        try {
          const started = Date.now();
          const runs = features.materialize({
            project: flags.project,
            featureViews: flags.view ?? [],
            startTime: BigInt(parseTimestampMicros(flags.start)),
            endTime: flags.end === undefined ? 0n : BigInt(parseTimestampMicros(flags.end)),
            incremental: flags.incremental,
          });
          for await (const progress of runs) {
            if (!progress.done) continue;
            const seconds = (Date.now() - started) / 1000;
            process.stdout.write(
              `${progress.featureView}: ${progress.rowsRead} entities read, ${progress.rowsWritten} written online, ` +
                `${progress.rowsStale} already newer online (${seconds.toFixed(1)} s)\n`,
            );
          }
        } catch (error) {
          process.stderr.write(
            `fstore materialize: ${error instanceof Error ? error.message : String(error)}\n`,
          );
          process.exitCode = 1;
        } finally {
          features.close();
        }
      },
    );
  addMonitoringCommands(program);
  addConnectionOptionsToClients(program);
  addSecurityCommands(program);
  return program;
}

await buildProgram().parseAsync(process.argv);
