/**
 * The gRPC floor: a grpc-js server that answers `fstore.v1.FeatureService/GetOnlineFeatures` with
 * a response of exactly the shape FStore returns (one double column per feature, every row
 * PRESENT, one event time per row) without any store, registry or validation work. It decodes
 * the request (protobuf-es, as FStore does) to learn the batch size and features, and sends a
 * response encoded once per (rows, features) and then cached.
 *
 * What k6 measures against it is the cost of grpc-js + HTTP/2 + the k6 client on this machine:
 * the part of the service's cost FStore's own code cannot remove. Compare
 *   service req/s  ≤  floor req/s (transport only)   and   service req/s  vs  raw Redis req/s.
 *
 *   node --import tsx bench/grpc-floor.ts [--port 6567] [--processes 2]
 *
 * It serves no reflection: point k6 at it with PROTO_DIR=proto (bench/online-lookup.js then
 * loads the .proto files instead of asking the server).
 */
import cluster from 'node:cluster';
import { parseArgs } from 'node:util';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { Server, ServerCredentials, type ServerUnaryCall, type sendUnaryData } from '@grpc/grpc-js';
import {
  GetOnlineFeaturesRequestSchema,
  GetOnlineFeaturesResponseSchema,
} from '../gen/fstore/v1/feature_service_pb.js';
import { FeatureStatus } from '../gen/fstore/v1/values_pb.js';

const { values: flags } = parseArgs({
  options: { port: { type: 'string' }, host: { type: 'string' }, processes: { type: 'string' } },
});
const port = Number(flags.port ?? 6567);
const host = flags.host ?? '127.0.0.1';
const processes = Number(flags.processes ?? 2);

const identity = (bytes: Buffer): Buffer => bytes;
const cache = new Map<string, Buffer>();

function responseFor(rows: number, features: readonly string[]): Buffer {
  const key = `${rows}|${features.join(',')}`;
  let encoded = cache.get(key);
  if (encoded === undefined) {
    const nowMicros = BigInt(Date.now()) * 1000n;
    const message = create(GetOnlineFeaturesResponseSchema, {
      requestTime: nowMicros,
      features: features.map((name, feature) => ({
        name,
        values: {
          values: {
            case: 'doubleValues' as const,
            value: { values: Array.from({ length: rows }, (_, row) => row * 0.001 + feature + 0.123456789) },
          },
        },
        statuses: Array.from({ length: rows }, () => FeatureStatus.PRESENT),
        eventTimestamps: Array.from({ length: rows }, () => nowMicros - 5_000_000n),
      })),
    });
    encoded = Buffer.from(toBinary(GetOnlineFeaturesResponseSchema, message));
    if (cache.size > 1_000) cache.clear();
    cache.set(key, encoded);
  }
  return encoded;
}

function serve(): void {
  const server = new Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  server.addService(
    {
      getOnlineFeatures: {
        path: '/fstore.v1.FeatureService/GetOnlineFeatures',
        requestStream: false,
        responseStream: false,
        requestSerialize: identity,
        requestDeserialize: identity,
        responseSerialize: identity,
        responseDeserialize: identity,
      },
    },
    {
      getOnlineFeatures: (call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) => {
        const request = fromBinary(GetOnlineFeaturesRequestSchema, call.request);
        let rows = 0;
        for (const vector of Object.values(request.entities)) {
          const value = vector.values.value as { values?: unknown[] } | undefined;
          rows = Math.max(rows, value?.values?.length ?? 0);
        }
        callback(null, responseFor(rows, request.features));
      },
    },
  );
  server.bindAsync(`${host}:${port}`, ServerCredentials.createInsecure(), (error, bound) => {
    if (error) {
      process.stderr.write(`grpc-floor: cannot listen on ${host}:${port}: ${error.message}\n`);
      process.exit(1);
    }
    process.stdout.write(`grpc-floor: pid ${process.pid} listening on ${host}:${bound}\n`);
  });
  process.on('SIGTERM', () => {
    server.forceShutdown();
    process.exit(0);
  });
}

if (processes > 1 && cluster.isPrimary) {
  for (let index = 0; index < processes; index++) cluster.fork();
  process.on('SIGTERM', () => {
    for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 1_000);
  });
  cluster.on('exit', () => {
    if (Object.keys(cluster.workers ?? {}).length === 0) process.exit(0);
  });
} else {
  serve();
}
