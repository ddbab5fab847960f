import {
  create,
  type DescField,
  type DescMessage,
  type DescService,
  type MessageShape,
  ScalarType,
  toBinary,
} from '@bufbuild/protobuf';
import { Client, credentials, Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminService } from '../../gen/fstore/v1/admin_pb.js';
import { FeatureService } from '../../gen/fstore/v1/feature_service_pb.js';
import { MonitoringService } from '../../gen/fstore/v1/monitoring_pb.js';
import { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { grpcMethodPath } from '../../src/grpc/service-definition.js';
import { applyFixtures, seededRandom } from '../support/fixtures.js';
import { checkHealth } from '../support/grpc-probes.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';

/**
 * Hostile input over every RPC of the contract: random bytes, and random messages that are
 * structurally valid (every field of its declared type, with extreme numbers, NULs, odd unicode,
 * empty and repeated values). Whatever arrives, the answer is never INTERNAL or UNKNOWN, and the
 * server keeps serving. Runs a fixed seed and one random seed (printed when it fails).
 */

const services: readonly DescService[] = [FeatureService, RegistryService, MonitoringService, AdminService];
const project = 'fuzz';

type Random = () => number;

const pick = <T>(random: Random, values: readonly T[]): T =>
  values[Math.floor(random() * values.length)] as T;

function randomBytes(random: Random, max: number): Buffer {
  const bytes = Buffer.alloc(Math.floor(random() * max));
  for (let index = 0; index < bytes.length; index++) bytes[index] = Math.floor(random() * 256);
  return bytes;
}

function randomString(random: Random): string {
  return pick(random, [
    () => '',
    () => project,
    () => 'user_stats',
    () => 'pair_stats:amount',
    () => 'a\u0000b',
    () => '\u{1F600}é\u200B',
    () => 'x'.repeat(Math.floor(random() * 5_000)),
    () => String.fromCharCode(...Array.from({ length: 8 }, () => Math.floor(random() * 0xd7ff))),
    () => '*',
    () => '../../etc/passwd',
  ])();
}

const int64Extremes = [
  0n,
  1n,
  -1n,
  2n ** 31n,
  -(2n ** 31n),
  2n ** 63n - 1n,
  -(2n ** 63n),
  1_767_225_600_000_000n,
];
const uint64Extremes = [0n, 1n, 2n ** 32n, 2n ** 64n - 1n];
const int32Extremes = [0, 1, -1, 2_147_483_647, -2_147_483_648];
const uint32Extremes = [0, 1, 4_294_967_295, 1_000_000];
const floatExtremes = [0, -0, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 3.4e38, -1e-38];
const doubleExtremes = [
  0,
  -0,
  1.5,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  1e308,
  -1e-308,
];

function randomScalar(random: Random, type: ScalarType): unknown {
  switch (type) {
    case ScalarType.STRING:
      return randomString(random);
    case ScalarType.BYTES:
      return new Uint8Array(randomBytes(random, 64));
    case ScalarType.BOOL:
      return random() < 0.5;
    case ScalarType.DOUBLE:
      return pick(random, doubleExtremes);
    case ScalarType.FLOAT:
      return pick(random, floatExtremes);
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return pick(random, int64Extremes);
    case ScalarType.UINT64:
    case ScalarType.FIXED64:
      return pick(random, uint64Extremes);
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return pick(random, uint32Extremes);
    default:
      return pick(random, int32Extremes);
  }
}

function randomValue(random: Random, field: DescField, depth: number): unknown {
  switch (field.fieldKind) {
    case 'scalar':
      return randomScalar(random, field.scalar);
    case 'enum':
      return pick(random, [...field.enum.values.map((value) => value.number), 99]);
    case 'message':
      return depth > 4 ? create(field.message) : randomMessage(random, field.message, depth + 1);
    case 'list': {
      const length = pick(random, [0, 1, 2, 3, 50]);
      return Array.from({ length }, () =>
        field.listKind === 'scalar'
          ? randomScalar(random, field.scalar)
          : field.listKind === 'enum'
            ? pick(
                random,
                field.enum.values.map((value) => value.number),
              )
            : depth > 4
              ? create(field.message)
              : randomMessage(random, field.message, depth + 1),
      );
    }
    case 'map': {
      const entries: Record<string, unknown> = {};
      for (let index = 0; index < pick(random, [0, 1, 2]); index++) {
        const key = String(randomScalar(random, field.mapKey));
        entries[key] =
          field.mapKind === 'scalar'
            ? randomScalar(random, field.scalar)
            : field.mapKind === 'enum'
              ? pick(
                  random,
                  field.enum.values.map((value) => value.number),
                )
              : depth > 4
                ? create(field.message)
                : randomMessage(random, field.message, depth + 1);
      }
      return entries;
    }
  }
}

function randomMessage(random: Random, schema: DescMessage, depth = 0): MessageShape<DescMessage> {
  const message = create(schema) as Record<string, unknown>;
  for (const field of schema.fields) {
    if (random() < 0.35) continue;
    const value = randomValue(random, field, depth);
    if (field.oneof) {
      if (random() < 0.5) message[field.oneof.localName] = { case: field.localName, value };
    } else message[field.localName] = value;
  }
  return message as MessageShape<DescMessage>;
}

interface Outcome {
  readonly code: number;
  readonly details: string;
}

const identity = (bytes: Buffer) => bytes;

function call(
  client: Client,
  service: DescService,
  methodIndex: number,
  messages: Buffer[],
): Promise<Outcome> {
  const method = service.methods[methodIndex];
  if (!method) throw new Error('no such method');
  const path = grpcMethodPath(method);
  const options = { deadline: Date.now() + 10_000 };
  return new Promise((resolve) => {
    const done = (error: ServiceError | null) =>
      resolve(error ? { code: error.code, details: error.details } : { code: status.OK, details: '' });
    switch (method.methodKind) {
      case 'unary':
        client.makeUnaryRequest(
          path,
          identity,
          identity,
          messages[0] ?? Buffer.alloc(0),
          new Metadata(),
          options,
          done,
        );
        return;
      case 'server_streaming': {
        const stream = client.makeServerStreamRequest(
          path,
          identity,
          identity,
          messages[0] ?? Buffer.alloc(0),
          new Metadata(),
          options,
        );
        stream.on('data', () => undefined);
        stream.on('error', (error: ServiceError) => done(error));
        stream.on('end', () => done(null));
        return;
      }
      case 'client_streaming': {
        const stream = client.makeClientStreamRequest(
          path,
          identity,
          identity,
          new Metadata(),
          options,
          done,
        );
        for (const message of messages) stream.write(message);
        stream.end();
        return;
      }
      case 'bidi_streaming': {
        const stream = client.makeBidiStreamRequest(path, identity, identity, new Metadata(), options);
        stream.on('data', () => undefined);
        let ended = false;
        stream.on('error', (error: ServiceError) => {
          if (!ended) done(error);
          ended = true;
        });
        stream.on('end', () => {
          if (!ended) done(null);
          ended = true;
        });
        for (const message of messages) stream.write(message);
        stream.end();
        return;
      }
    }
  });
}

let server: TestServer;
let client: Client;

beforeAll(async () => {
  server = await startTestServer('redis');
  await applyFixtures(server.registry, project);
  client = new Client(server.address, credentials.createInsecure());
});

afterAll(async () => {
  client?.close();
  await server?.stop();
});

describe('bytes that do not decode as the request', () => {
  const garbage = Buffer.from([0xff, 0xff, 0xff, 0x0f]);
  it('are INVALID_ARGUMENT naming the message type, for a unary call', async () => {
    const index = FeatureService.methods.findIndex((method) => method.name === 'GetOnlineFeatures');
    const outcome = await call(client, FeatureService, index, [garbage]);
    expect(status[outcome.code]).toBe('INVALID_ARGUMENT');
    expect(outcome.details).toMatch(/^the request is not a valid fstore\.v1\.GetOnlineFeaturesRequest: /);
  });
  it('are INVALID_ARGUMENT naming the message of a stream, and nothing is stored', async () => {
    const index = FeatureService.methods.findIndex((method) => method.name === 'IngestFeatures');
    const outcome = await call(client, FeatureService, index, [garbage]);
    expect(status[outcome.code]).toBe('INVALID_ARGUMENT');
    expect(outcome.details).toMatch(
      /^message 0 of the request stream is not a valid fstore\.v1\.IngestFeaturesRequest: /,
    );
  });
});

const randomSeed = Math.floor(Math.random() * 2 ** 31);

describe.each([
  ['fixed seed', 20_261_205],
  ['random seed', randomSeed],
])('every RPC under hostile input (%s %i)', (_label, seed) => {
  it('never answers INTERNAL or UNKNOWN, and keeps serving', async () => {
    const random = seededRandom(seed);
    const failures: string[] = [];
    const methods = services.flatMap((service) =>
      service.methods.map((_method, index) => ({ service, index })),
    );
    for (let round = 0; round < 1_500; round++) {
      const { service, index } = pick(random, methods);
      const method = service.methods[index];
      if (!method) continue;
      const structured = random() < 0.7;
      const count =
        method.methodKind === 'client_streaming' || method.methodKind === 'bidi_streaming'
          ? pick(random, [0, 1, 2, 3])
          : 1;
      const messages = Array.from({ length: count }, () =>
        structured
          ? Buffer.from(toBinary(method.input, randomMessage(random, method.input)))
          : randomBytes(random, 300),
      );
      const outcome = await call(client, service, index, messages);
      if (outcome.code === status.INTERNAL || outcome.code === status.UNKNOWN)
        failures.push(
          `${service.typeName}/${method.name} (${structured ? 'structured' : 'random bytes'}, seed ${seed}, round ${round}): ${status[outcome.code]} ${outcome.details}`,
        );
    }
    expect(await checkHealth(server.address)).toBe('SERVING');
    expect(failures, `seed ${seed}`).toEqual([]);
  }, 180_000);
});
