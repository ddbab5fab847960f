import { spawn } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { copyFile, readFile, rename } from 'node:fs/promises';
import { createServer } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { type PeerCertificate, type TLSSocket, connect as tlsConnect } from 'node:tls';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import { type ChannelCredentials, Metadata } from '@grpc/grpc-js';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminService, type AuditEvent, Role } from '../../gen/fstore/v1/admin_pb.js';
import {
  FeatureService,
  type IngestFeaturesRequestSchema,
  type MaterializeResponse,
} from '../../gen/fstore/v1/feature_service_pb.js';
import { MonitoringService } from '../../gen/fstore/v1/monitoring_pb.js';
import { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { createKeyInDatabase } from '../../src/app/security.js';
import {
  bearerMetadata,
  type ClientOptions,
  createClient,
  type ServiceClient,
} from '../../src/grpc/client.js';
import { createChannelCredentials } from '../../src/grpc/tls.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { doubles, failureOf, strings, valuesOf } from '../support/fixtures.js';
import { startTestServer, type TestServer } from '../support/serving-harness.js';
import { type CertificatePair, createTestPki, type TestPki } from '../support/test-certificates.js';

/**
 * Credentials end to end through `fstore serve` (real gRPC, PostgreSQL and Redis): API keys shared
 * by two serving processes (revocation, last use, hashes at rest), OpenID Connect JWTs from a local
 * issuer (roles, groups, subjects, expiry, audience, key rotation), TLS and mTLS on the gRPC and
 * metrics ports with certificate reload, and the audit log of everything that changes something.
 */

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until `accept` holds (a rejection counts as a value), or fails after timeoutMs. */
async function eventually<T>(
  probe: () => Promise<T>,
  accept: (value: unknown) => boolean,
  timeoutMs = 10_000,
  intervalMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch((error: unknown) => error);
    if (accept(value)) return value as T;
    if (Date.now() > deadline)
      throw new Error(
        `condition not met within ${timeoutMs} ms; last: ${value instanceof Error ? value.message : JSON.stringify(value, jsonSafe)}`,
      );
    await sleep(intervalMs);
  }
}

/** JSON.stringify replacer: bigints as strings. */
const jsonSafe = (_key: string, value: unknown) => (typeof value === 'bigint' ? value.toString() : value);

const isFailure = (value: unknown, code: string): value is { code: string; message: string } =>
  value instanceof Error && (value as { code?: unknown }).code === code;

/** Every client of one caller (address, credential, transport), closed together. */
interface Clients {
  readonly features: ServiceClient<typeof FeatureService>;
  readonly registry: ServiceClient<typeof RegistryService>;
  readonly monitoring: ServiceClient<typeof MonitoringService>;
  readonly admin: ServiceClient<typeof AdminService>;
  close(): void;
}

const openClients: Clients[] = [];
function clientsOf(
  address: string,
  options: { credential?: string; credentials?: ChannelCredentials } = {},
): Clients {
  const clientOptions: ClientOptions = {
    ...(options.credential ? { metadata: bearerMetadata(options.credential) } : {}),
    ...(options.credentials ? { credentials: options.credentials } : {}),
  };
  const features = createClient(FeatureService, address, clientOptions);
  const registry = createClient(RegistryService, address, clientOptions);
  const monitoring = createClient(MonitoringService, address, clientOptions);
  const admin = createClient(AdminService, address, clientOptions);
  const clients = {
    features,
    registry,
    monitoring,
    admin,
    close() {
      features.close();
      registry.close();
      monitoring.close();
      admin.close();
    },
  };
  openClients.push(clients);
  return clients;
}
afterAll(() => {
  for (const clients of openClients.splice(0)) clients.close();
});

/**
 * An admin@* key written straight into the server's schema (`fstore keys create --bootstrap`),
 * returned once the server accepts it: a running server learns of it from the change feed, or by
 * reloading on an unknown id at most once a second, so a key used the instant it is written may
 * be refused as unknown for up to that second.
 */
async function bootstrapAdmin(
  server: TestServer,
  credentials?: ChannelCredentials,
): Promise<{ key: string; id: string }> {
  const created = await createKeyInDatabase(server.config, {
    name: 'bootstrap admin',
    bindings: [{ role: 'admin', project: '*' }],
    expiresAt: undefined,
  });
  const admin = createClient(AdminService, server.address, {
    metadata: bearerMetadata(created.key),
    ...(credentials ? { credentials } : {}),
  });
  try {
    const whoAmI = await eventually(
      () => admin.whoAmI({}),
      (value) => !(value instanceof Error),
      3_000,
    );
    expect(whoAmI.principal).toBe(`key:${created.id}`);
  } finally {
    admin.close();
  }
  return created;
}

/** The secret part of `fsk_<id>_<secret>` (the secret's base64url may itself contain `_`). */
function secretOf(key: string, id: string): string {
  const prefix = `fsk_${id}_`;
  expect(key.startsWith(prefix)).toBe(true);
  return key.slice(prefix.length);
}

const sha256 = (text: string) => createHash('sha256').update(text).digest();

const userEntity = { name: 'user', joinKeys: [{ name: 'user_id', type: ValueType.STRING }] };
const scoresView = {
  name: 'scores',
  entities: ['user'],
  online: true,
  features: [
    { name: 'score', type: ValueType.DOUBLE },
    { name: 'note', type: ValueType.STRING },
  ],
};

async function applyScores(registry: ServiceClient<typeof RegistryService>, project: string) {
  await registry.applyEntity({ project, entity: userEntity });
  await registry.applyFeatureView({ project, featureView: scoresView });
}

const writeScore = (
  features: ServiceClient<typeof FeatureService>,
  project: string,
  user: string,
  score: number,
  note = 'n',
) =>
  features.writeOnlineFeatures({
    project,
    featureView: 'scores',
    entities: { user_id: strings(user) },
    eventTimestamps: [BigInt(Date.now() * 1000)],
    features: [
      { name: 'score', values: doubles(score) },
      { name: 'note', values: strings(note) },
    ],
  });

const readScore = (features: ServiceClient<typeof FeatureService>, project: string, ...users: string[]) =>
  features.getOnlineFeatures({
    project,
    features: ['scores:score'],
    entities: { user_id: strings(...users) },
  });

describe('API keys across two serving processes, and the audit log', () => {
  let one: TestServer;
  let two: TestServer;
  let bootstrap: { key: string; id: string };
  let adminOne: Clients;
  const schema = randomName('sec');
  const project = randomName('p');
  const elsewhere = randomName('p');

  beforeAll(async () => {
    // One registry (schema) and one online store (key prefix): two replicas of one installation.
    const shared = { auth: 'on', postgresSchema: schema, redisKeyPrefix: `${randomName('t')}:` };
    one = await startTestServer('redis', shared, { keepSchema: true });
    two = await startTestServer('redis', shared);
    bootstrap = await bootstrapAdmin(one);
    adminOne = clientsOf(one.address, { credential: bootstrap.key });
    await applyScores(adminOne.registry, project);
  });
  afterAll(async () => {
    await one?.stop(); // keeps the schema
    await two?.stop(); // drops it
  });

  describe('API keys', () => {
    let reader: { key: string; id: string; createdAt: Date };

    it('a key created on one process works on the other; its revocation reaches the other within ~2 s', async () => {
      const created = await adminOne.admin.createApiKey({
        name: 'model server',
        bindings: [{ role: Role.READER, project }],
      });
      expect(created.key?.createdBy).toBe(`key:${bootstrap.id}`);
      const id = created.key?.id ?? '';
      reader = { key: created.secret, id, createdAt: timestampDate(created.key!.createdAt!) };
      expect(created.secret).toMatch(/^fsk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}$/);
      expect(created.secret.startsWith(`fsk_${id}_`)).toBe(true);

      await writeScore(adminOne.features, project, 'u1', 42.5);
      const readerTwo = clientsOf(two.address, { credential: reader.key });
      // The other process learns of the key from the change feed (or its reload on an unknown id).
      const listed = await eventually(
        () => readerTwo.registry.listFeatureViews({ project }),
        (value) => !(value instanceof Error),
        3_000,
      );
      expect(listed.featureViews.map((view) => view.name)).toEqual(['scores']);
      // Same online store: the row written through process one is read through process two.
      expect(valuesOf((await readScore(readerTwo.features, project, 'u1')).features[0])).toEqual([42.5]);
      const whoAmI = await readerTwo.admin.whoAmI({});
      expect(whoAmI).toMatchObject({ principal: `key:${id}`, method: 'api_key' });
      expect(whoAmI.bindings.map((binding) => [binding.role, binding.project])).toEqual([
        [Role.READER, project],
      ]);
      // Reader on its project only, and reading only.
      expect(await failureOf(readerTwo.registry.listFeatureViews({ project: elsewhere }))).toMatchObject({
        code: 'permission_denied',
        message: expect.stringContaining(`key:${id} lacks permission registry.read`),
      });
      expect(await failureOf(writeScore(readerTwo.features, project, 'u1', 1))).toMatchObject({
        code: 'permission_denied',
        message: expect.stringContaining('online.write'),
      });

      const started = performance.now();
      const revoked = await adminOne.admin.revokeApiKey({ id });
      expect(revoked.key?.revokedAt).toBeDefined();
      const refusal = await eventually(
        () => readerTwo.registry.listFeatureViews({ project }),
        (value) => isFailure(value, 'unauthenticated'),
        5_000,
        10,
      );
      const revokedAfterMs = performance.now() - started;
      console.info(`revocation on process one refused on process two after ${revokedAfterMs.toFixed(0)} ms`);
      expect((refusal as unknown as Error).message).toContain('revoked');
      expect(revokedAfterMs).toBeLessThan(2_000);
      // Every RPC is refused with it, on both processes.
      expect(await failureOf(readScore(readerTwo.features, project, 'u1'))).toMatchObject({
        code: 'unauthenticated',
        message: expect.stringContaining('revoked'),
      });
      const readerOne = clientsOf(one.address, { credential: reader.key });
      expect(await failureOf(readerOne.admin.whoAmI({}))).toMatchObject({
        code: 'unauthenticated',
        message: expect.stringContaining('revoked'),
      });

      const active = await adminOne.admin.listApiKeys({ project });
      expect(active.keys.map((key) => key.id)).not.toContain(id);
      const all = await adminOne.admin.listApiKeys({ project, includeRevoked: true });
      const listedKey = all.keys.find((key) => key.id === id);
      expect(listedKey?.revokedAt).toBeDefined();
      expect(timestampDate(listedKey!.revokedAt!).getTime()).toBeGreaterThanOrEqual(
        reader.createdAt.getTime(),
      );
      expect(JSON.stringify(all, jsonSafe)).not.toContain(secretOf(reader.key, id));
    });

    it('records when a key was last used, within the verifier flush interval (10 s)', async () => {
      expect(reader).toBeDefined();
      // Used on process two only: its verifier writes use times every lastUsedFlushMs (10 s by
      // default, not configurable from the settings), so this waits up to one interval plus margin.
      const listed = await eventually(
        () => adminOne.admin.listApiKeys({ project, includeRevoked: true }),
        (value) =>
          !(value instanceof Error) &&
          (value as { keys: { id: string; lastUsedAt?: unknown }[] }).keys.some(
            (key) => key.id === reader.id && key.lastUsedAt !== undefined,
          ),
        15_000,
        250,
      );
      const lastUsed = timestampDate(listed.keys.find((key) => key.id === reader.id)!.lastUsedAt!);
      expect(lastUsed.getTime()).toBeGreaterThanOrEqual(reader.createdAt.getTime() - 1_000);
      expect(lastUsed.getTime()).toBeLessThanOrEqual(Date.now() + 1_000);
    }, 25_000);

    it('never stores a key in clear: only SHA-256 of the secret part', async () => {
      expect(reader).toBeDefined();
      const database = new pg.Client({ connectionString: requireEnvironment('FSTORE_TEST_POSTGRES_URL') });
      await database.connect();
      try {
        const { rows } = await database.query<Record<string, unknown>>(
          `SELECT * FROM "${one.config.postgresSchema}".api_keys`,
        );
        expect(rows.map((row) => row.id)).toEqual(expect.arrayContaining([bootstrap.id, reader.id]));
        const keys = [bootstrap, reader];
        const forbidden = keys.flatMap((key) => [key.key, secretOf(key.key, key.id)]);
        for (const row of rows)
          for (const [column, value] of Object.entries(row)) {
            const renderings =
              value instanceof Buffer
                ? [
                    value.toString('hex'),
                    value.toString('base64'),
                    value.toString('base64url'),
                    value.toString('latin1'),
                  ]
                : [value instanceof Date ? value.toISOString() : (JSON.stringify(value) ?? String(value))];
            for (const text of renderings)
              for (const secret of forbidden)
                expect(text.includes(secret), `api_keys.${column} of ${String(row.id)}`).toBe(false);
          }
        for (const key of keys) {
          const row = rows.find((candidate) => candidate.id === key.id);
          const stored = row?.secret_hash;
          expect(Buffer.isBuffer(stored)).toBe(true);
          expect((stored as Buffer).toString('hex')).toBe(sha256(secretOf(key.key, key.id)).toString('hex'));
        }
      } finally {
        await database.end();
      }
    });
  });

  describe('audit log', () => {
    const auditProject = randomName('a');
    const tag = randomName('rid');
    const requestIds: string[] = [];
    /** Per-call metadata naming the call (x-request-id), so its audit event can be found. */
    const named = (name: string) => {
      const metadata = new Metadata();
      metadata.set('x-request-id', `${tag}-${name}`);
      requestIds.push(`${tag}-${name}`);
      return { metadata };
    };
    const secretNumber = 123456.789;
    const secretText = 'secret-value-xyz';
    const t = (seconds: number) => 1_767_225_600_000_000 + seconds * 1_000_000;
    const feature = 'fstore.v1.FeatureService';
    const registryRpc = 'fstore.v1.RegistryService';
    const adminRpc = 'fstore.v1.AdminService';

    it('records each change with principal, RPC, project, object, outcome and rows; no reads, no values, no secrets', async () => {
      const api = adminOne;
      const admin = `key:${bootstrap.id}`;
      const startedAt = Date.now();
      await api.registry.applyEntity({ project: auditProject, entity: userEntity }, named('apply-entity'));
      await api.registry.applyFeatureView(
        { project: auditProject, featureView: scoresView },
        named('apply-view'),
      );
      await api.registry.applyFeatureView(
        { project: auditProject, featureView: { ...scoresView, name: 'doomed' } },
        named('apply-doomed'),
      );
      await api.registry.deleteFeatureView({ project: auditProject, name: 'doomed' }, named('delete-view'));
      await api.registry.applyFeatureSet(
        { project: auditProject, featureSet: { name: 'picks', features: ['scores:score'] } },
        named('apply-set'),
      );
      const written = await api.features.writeOnlineFeatures(
        {
          project: auditProject,
          featureView: 'scores',
          entities: { user_id: strings('w1', 'w2') },
          eventTimestamps: [BigInt(Date.now() * 1000), BigInt(Date.now() * 1000)],
          features: [
            { name: 'score', values: doubles(secretNumber, 2.5) },
            { name: 'note', values: strings(secretText, 'plain') },
          ],
        },
        named('write'),
      );
      expect(written.rowsWritten).toBe(2);
      type IngestRequest = MessageInitShape<typeof IngestFeaturesRequestSchema>;
      const ingest: IngestRequest[] = [
        { message: { case: 'header', value: { project: auditProject, featureView: 'scores' } } },
        {
          message: {
            case: 'rows',
            value: {
              entities: { user_id: strings('i1', 'i2', 'i3') },
              eventTimestamps: [t(1), t(2), t(3)].map((time) => BigInt(time)),
              features: [
                { name: 'score', values: doubles(secretNumber, 7, 8) },
                { name: 'note', values: strings(secretText, 'b', 'c') },
              ],
            },
          },
        },
        { message: { case: 'end', value: { rowCount: 3n } } },
      ];
      expect((await api.features.ingestFeatures(ingest, named('ingest'))).rowsIngested).toBe(3n);
      const progress: MaterializeResponse[] = [];
      for await (const message of api.features.materialize(
        { project: auditProject, featureViews: ['scores'], startTime: BigInt(t(0)), endTime: BigInt(t(10)) },
        named('materialize'),
      ))
        progress.push(message);
      expect(progress.at(-1)).toMatchObject({ featureView: 'scores', done: true, rowsWritten: 3n });
      const saved = await api.monitoring.saveReferenceProfile(
        {
          project: auditProject,
          name: 'baseline',
          featureView: 'scores',
          features: ['score'],
          source: { source: { case: 'offline', value: { startTime: BigInt(t(0)), endTime: BigInt(t(10)) } } },
        },
        named('profile'),
      );
      expect(saved.profile?.rows).toBe(3n);
      const created = await api.admin.createApiKey(
        { name: 'audit reader', bindings: [{ role: Role.READER, project: auditProject }] },
        named('create-key'),
      );
      const readerId = created.key?.id ?? '';
      const reader = clientsOf(one.address, { credential: created.secret });
      expect(
        await failureOf(
          reader.features.writeOnlineFeatures(
            {
              project: auditProject,
              featureView: 'scores',
              entities: { user_id: strings('w1') },
              eventTimestamps: [BigInt(Date.now() * 1000)],
              features: [
                { name: 'score', values: doubles(secretNumber) },
                { name: 'note', values: strings(secretText) },
              ],
            },
            named('denied-write'),
          ),
        ),
      ).toMatchObject({ code: 'permission_denied' });
      await api.admin.revokeApiKey({ id: readerId }, named('revoke-key'));

      // Reads: none of them may leave an event.
      const readIds = [`${tag}-read-online`, `${tag}-read-list`, `${tag}-read-historical`, `${tag}-read-get`];
      const online = await api.features.getOnlineFeatures(
        { project: auditProject, features: ['scores:score'], entities: { user_id: strings('i1', 'w1') } },
        named('read-online'),
      );
      expect(valuesOf(online.features[0])).toEqual([secretNumber, secretNumber]);
      expect(
        (await api.registry.listFeatureViews({ project: auditProject }, named('read-list'))).featureViews.map(
          (view) => view.name,
        ),
      ).toEqual(['scores']);
      await api.registry.getFeatureView({ project: auditProject, name: 'scores' }, named('read-get'));
      let historicalRows = 0;
      for await (const chunk of api.features.getHistoricalFeatures(
        [
          {
            message: {
              case: 'query',
              value: {
                project: auditProject,
                features: ['scores:score'],
                range: { startTime: BigInt(t(0)), endTime: BigInt(t(10)) },
              },
            },
          },
          { message: { case: 'end', value: { rowCount: 0n } } },
        ],
        named('read-historical'),
      ))
        historicalRows += chunk.timestamps.length;
      expect(historicalRows).toBe(3);
      // A change the handler refuses is recorded with its status.
      expect(
        await failureOf(
          api.registry.deleteFeatureView(
            { project: auditProject, name: 'never-was' },
            named('delete-missing'),
          ),
        ),
      ).toMatchObject({ code: 'not_found' });
      // The last change: once its event is listed, every earlier call's event would be too (one
      // process writes its events in the order recorded).
      await api.registry.deleteFeatureSet({ project: auditProject, name: 'picks' }, named('delete-set'));

      const sentinel = `${tag}-delete-set`;
      const listed = await eventually(
        () => api.admin.listAuditEvents({ principal: admin, limit: 1000 }),
        (value) =>
          !(value instanceof Error) &&
          (value as { events: AuditEvent[] }).events.some((event) => event.requestId === sentinel),
        10_000,
      );
      const ids = listed.events.map((event) => event.id);
      expect(ids).toEqual([...ids].sort((a, b) => (a > b ? -1 : a < b ? 1 : 0))); // newest first
      const byRequest = new Map(listed.events.map((event) => [event.requestId, event]));

      const expected: [name: string, rpc: string, project: string, object: string, rows: number][] = [
        ['apply-entity', `${registryRpc}/ApplyEntity`, auditProject, 'user', 0],
        ['apply-view', `${registryRpc}/ApplyFeatureView`, auditProject, 'scores', 0],
        ['apply-doomed', `${registryRpc}/ApplyFeatureView`, auditProject, 'doomed', 0],
        ['delete-view', `${registryRpc}/DeleteFeatureView`, auditProject, 'doomed', 0],
        ['apply-set', `${registryRpc}/ApplyFeatureSet`, auditProject, 'picks', 0],
        ['write', `${feature}/WriteOnlineFeatures`, auditProject, 'scores', 2],
        ['ingest', `${feature}/IngestFeatures`, auditProject, 'scores', 3],
        ['materialize', `${feature}/Materialize`, auditProject, 'scores', 3],
        ['profile', 'fstore.v1.MonitoringService/SaveReferenceProfile', auditProject, 'baseline', 0],
        ['create-key', `${adminRpc}/CreateApiKey`, '', readerId, 0],
        ['revoke-key', `${adminRpc}/RevokeApiKey`, '', readerId, 0],
        ['delete-set', `${registryRpc}/DeleteFeatureSet`, auditProject, 'picks', 0],
      ];
      for (const [name, rpc, eventProject, object, rows] of expected) {
        const event = byRequest.get(`${tag}-${name}`);
        expect(event, name).toBeDefined();
        expect(
          {
            principal: event?.principal,
            rpc: event?.rpc,
            project: event?.project,
            object: event?.object,
            outcome: event?.outcome,
            rows: Number(event?.rows),
          },
          name,
        ).toEqual({ principal: admin, rpc, project: eventProject, object, outcome: 'OK', rows });
      }
      expect(byRequest.get(`${tag}-delete-missing`)).toMatchObject({
        principal: admin,
        rpc: `${registryRpc}/DeleteFeatureView`,
        project: auditProject,
        object: 'never-was',
        outcome: 'NOT_FOUND',
        rows: 0n,
      });
      for (const [name] of expected) {
        const time = timestampDate(byRequest.get(`${tag}-${name}`)!.time!).getTime();
        expect(time).toBeGreaterThanOrEqual(startedAt - 5_000);
        expect(time).toBeLessThanOrEqual(Date.now() + 5_000);
      }
      // In call order (ids increase as events are written).
      const order = expected.map(([name]) => byRequest.get(`${tag}-${name}`)?.id ?? 0n);
      expect(order).toEqual([...order].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));

      // The refused write, under the reader's principal; filtering by principal gives it alone.
      const denied = await api.admin.listAuditEvents({ principal: `key:${readerId}` });
      expect(denied.events).toEqual([
        expect.objectContaining({
          principal: `key:${readerId}`,
          rpc: `${feature}/WriteOnlineFeatures`,
          project: auditProject,
          object: 'scores',
          outcome: 'PERMISSION_DENIED',
          rows: 0n,
          requestId: `${tag}-denied-write`,
        }),
      ]);

      // Everything in the log: no read RPC, none of our reads, no value written, no secret.
      const everything = await api.admin.listAuditEvents({ limit: 10_000 });
      const readRpcs = [
        'GetOnlineFeatures',
        'GetHistoricalFeatures',
        'ListFeatureViews',
        'GetFeatureView',
        'ListApiKeys',
        'ListAuditEvents',
        'WhoAmI',
      ];
      for (const event of everything.events) {
        expect(readRpcs).not.toContain(event.rpc.split('/').pop());
        expect(readIds).not.toContain(event.requestId);
      }
      const text = JSON.stringify(everything.events, jsonSafe);
      for (const forbidden of [
        '123456.789',
        '123456',
        secretText,
        bootstrap.key,
        secretOf(bootstrap.key, bootstrap.id),
        created.secret,
        secretOf(created.secret, readerId),
      ])
        expect(text.includes(forbidden), forbidden).toBe(false);
      // And the table itself (what `list` maps could hide nothing, but the rows are the evidence).
      const database = new pg.Client({ connectionString: requireEnvironment('FSTORE_TEST_POSTGRES_URL') });
      await database.connect();
      try {
        const { rows } = await database.query(`SELECT * FROM "${one.config.postgresSchema}".audit_events`);
        const stored = JSON.stringify(rows);
        expect(rows.length).toBeGreaterThanOrEqual(expected.length + 1);
        for (const forbidden of [secretText, '123456.789', bootstrap.key, created.secret])
          expect(stored.includes(forbidden), forbidden).toBe(false);
      } finally {
        await database.end();
      }

      // Filters: by method name, by full RPC name, by project.
      const writes = await api.admin.listAuditEvents({ rpc: 'WriteOnlineFeatures', limit: 1000 });
      expect(writes.events.every((event) => event.rpc === `${feature}/WriteOnlineFeatures`)).toBe(true);
      expect(writes.events.map((event) => event.requestId)).toEqual(
        expect.arrayContaining([`${tag}-write`, `${tag}-denied-write`]),
      );
      const materializations = await api.admin.listAuditEvents({ rpc: `${feature}/Materialize` });
      expect(materializations.events.map((event) => event.requestId)).toEqual([`${tag}-materialize`]);
      const inProject = await api.admin.listAuditEvents({ project: auditProject, limit: 1000 });
      expect(inProject.events.every((event) => event.project === auditProject)).toBe(true);
      expect(new Set(inProject.events.map((event) => event.requestId))).toEqual(
        new Set(
          expected
            .filter(([, , eventProject]) => eventProject === auditProject)
            .map(([name]) => `${tag}-${name}`)
            .concat(`${tag}-denied-write`, `${tag}-delete-missing`),
        ),
      );
      const adminWrites = await api.admin.listAuditEvents({
        principal: admin,
        rpc: 'WriteOnlineFeatures',
        project: auditProject,
      });
      expect(adminWrites.events.map((event) => event.requestId)).toEqual([`${tag}-write`]);
    });

    it('`fstore audit` prints the events, one JSON line each, with FSTORE_API_KEY', async () => {
      const result = await runCliWithEnvironment(
        ['audit', '--address', one.address, '--project', auditProject, '--json', '--limit', '1000'],
        { FSTORE_API_KEY: bootstrap.key },
      );
      expect(result.code, result.output).toBe(0);
      const lines = result.stdout.split('\n').filter((line) => line !== '');
      const events = lines.map((line) => JSON.parse(line) as Record<string, unknown>);
      expect(events.length).toBe(12); // the ten changes of the project and the two refused ones
      expect(events.every((event) => event.project === auditProject)).toBe(true);
      expect(events.find((event) => event.requestId === `${tag}-write`)).toMatchObject({
        principal: `key:${bootstrap.id}`,
        rpc: 'fstore.v1.FeatureService/WriteOnlineFeatures',
        object: 'scores',
        outcome: 'OK',
        rows: 2,
      });
      expect(events.find((event) => event.requestId === `${tag}-denied-write`)).toMatchObject({
        outcome: 'PERMISSION_DENIED',
        rows: 0,
      });
      expect(result.output).not.toContain(secretText);
      expect(result.output).not.toContain(bootstrap.key);

      const filtered = await runCliWithEnvironment(
        ['audit', '--address', one.address, '--rpc', 'Materialize', '--project', auditProject, '--json'],
        { FSTORE_API_KEY: bootstrap.key },
      );
      expect(filtered.code, filtered.output).toBe(0);
      expect(
        filtered.stdout
          .split('\n')
          .filter((line) => line !== '')
          .map((line) => (JSON.parse(line) as { requestId: string; rows: number }).requestId),
      ).toEqual([`${tag}-materialize`]);

      const anonymous = await runCliWithEnvironment(['audit', '--address', one.address, '--json'], {});
      expect(anonymous.code).not.toBe(0);
      expect(anonymous.output).toContain('no credentials');
    });
  });
});

/** `fstore <args>` as a child process with `environment` added (FSTORE_API_KEY / FSTORE_TOKEN removed first). */
function runCliWithEnvironment(
  args: readonly string[],
  environment: Record<string, string>,
): Promise<{ code: number | null; stdout: string; output: string }> {
  const binary = join(import.meta.dirname, '../../bin/fstore.js');
  const { FSTORE_API_KEY: _key, FSTORE_TOKEN: _token, ...inherited } = process.env;
  return new Promise((resolve, reject) => {
    let stdout = '';
    let output = '';
    const child = spawn(process.execPath, [binary, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...inherited, ...environment },
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.stdout.on('data', (data) => {
      stdout += data;
      output += data;
    });
    child.stderr.on('data', (data) => {
      output += data;
    });
    child.once('error', reject);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, output });
    });
  });
}

/** A local OpenID Connect issuer: discovery document and JWKS (mutable, to rotate keys). */
interface TestIssuer {
  readonly url: string;
  keys: JWK[];
  close(): Promise<void>;
}

async function startIssuer(keys: JWK[]): Promise<TestIssuer> {
  const server = createServer((request, response) => {
    const body =
      request.url === '/.well-known/openid-configuration'
        ? { issuer: issuer.url, jwks_uri: `${issuer.url}/jwks.json` }
        : request.url === '/jwks.json'
          ? { keys: issuer.keys }
          : undefined;
    if (!body) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const issuer: TestIssuer = {
    url,
    keys,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  return issuer;
}

interface SigningKey {
  readonly kid: string;
  readonly privateKey: CryptoKey;
  readonly jwk: JWK;
}

async function signingKey(kid: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  return { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } };
}

describe('JWT bearer tokens from an OpenID Connect issuer', () => {
  let issuer: TestIssuer;
  let server: TestServer;
  let first: SigningKey;
  const audience = 'fstore-test';
  const fraud = randomName('p');
  const risk = randomName('p');
  const now = () => Math.floor(Date.now() / 1000);

  const token = (claims: JWTPayload, key: SigningKey = first) =>
    new SignJWT({ iss: issuer.url, aud: audience, iat: now(), exp: now() + 600, ...claims })
      .setProtectedHeader({ alg: 'ES256', kid: key.kid })
      .sign(key.privateKey);
  const as = async (claims: JWTPayload, key?: SigningKey) =>
    clientsOf(server.address, { credential: await token(claims, key) });

  beforeAll(async () => {
    first = await signingKey('first');
    issuer = await startIssuer([first.jwk]);
    server = await startTestServer('redis', {
      auth: 'on',
      jwtIssuer: issuer.url,
      jwtAudience: audience,
      jwtRolesClaim: 'roles',
      authBindings: `group:fraud-team=writer@${fraud};jwt:alice=reader@${risk}`,
    });
    const admin = clientsOf(server.address, { credential: (await bootstrapAdmin(server)).key });
    await applyScores(admin.registry, fraud);
    await applyScores(admin.registry, risk);
    await writeScore(admin.features, fraud, 'f1', 1.5);
  });
  afterAll(async () => {
    await server?.stop();
    await issuer?.close();
  });

  it('takes role@project values of the roles claim: a reader reads but may not write', async () => {
    const reader = await as({ sub: 'bob', roles: [`reader@${fraud}`] });
    expect(
      (await reader.registry.listFeatureViews({ project: fraud })).featureViews.map((v) => v.name),
    ).toEqual(['scores']);
    expect(valuesOf((await readScore(reader.features, fraud, 'f1')).features[0])).toEqual([1.5]);
    expect(await failureOf(writeScore(reader.features, fraud, 'f1', 2))).toMatchObject({
      code: 'permission_denied',
      message: expect.stringContaining('jwt:bob lacks permission online.write'),
    });
    expect(await failureOf(reader.registry.listFeatureViews({ project: risk }))).toMatchObject({
      code: 'permission_denied',
    });
    const whoAmI = await reader.admin.whoAmI({});
    expect(whoAmI).toMatchObject({ principal: 'jwt:bob', method: 'jwt' });
  });

  it('binds groups of the roles claim and subjects through FSTORE_AUTH_BINDINGS', async () => {
    const analyst = await as({ sub: 'carol', roles: ['fraud-team'] });
    expect(await writeScore(analyst.features, fraud, 'f2', 99.25)).toMatchObject({ rowsWritten: 1 });
    expect(valuesOf((await readScore(analyst.features, fraud, 'f2')).features[0])).toEqual([99.25]);
    expect(await failureOf(writeScore(analyst.features, risk, 'f2', 1))).toMatchObject({
      code: 'permission_denied',
    });

    const alice = await as({ sub: 'alice' });
    expect(
      (await alice.registry.listFeatureViews({ project: risk })).featureViews.map((v) => v.name),
    ).toEqual(['scores']);
    expect(await failureOf(alice.registry.listFeatureViews({ project: fraud }))).toMatchObject({
      code: 'permission_denied',
    });
    const whoAmI = await alice.admin.whoAmI({});
    expect(whoAmI).toMatchObject({ principal: 'jwt:alice', method: 'jwt' });
    expect(whoAmI.bindings.map((binding) => [binding.role, binding.project])).toEqual([[Role.READER, risk]]);
  });

  it('refuses expired tokens and tokens for another audience', async () => {
    const expired = await as({
      sub: 'bob',
      roles: [`reader@${fraud}`],
      iat: now() - 7_200,
      exp: now() - 3_600,
    });
    expect(await failureOf(expired.registry.listFeatureViews({ project: fraud }))).toMatchObject({
      code: 'unauthenticated',
      message: expect.stringContaining('expired'),
    });
    const otherAudience = await as({ sub: 'bob', roles: [`reader@${fraud}`], aud: 'another-service' });
    expect(await failureOf(otherAudience.registry.listFeatureViews({ project: fraud }))).toMatchObject({
      code: 'unauthenticated',
      message: expect.stringContaining('audience'),
    });
    const unsigned = clientsOf(server.address, {
      credential: `${(await token({ sub: 'bob', roles: ['admin@*'] })).split('.').slice(0, 2).join('.')}.`,
    });
    expect(await failureOf(unsigned.admin.whoAmI({}))).toMatchObject({ code: 'unauthenticated' });
  });

  it('accepts a token signed with a new key once the issuer publishes it, without a restart', async () => {
    const next = await signingKey('next');
    const rotated = await as({ sub: 'bob', roles: [`reader@${fraud}`] }, next);
    expect(await failureOf(rotated.admin.whoAmI({}))).toMatchObject({
      code: 'unauthenticated',
      message: expect.stringContaining('unknown signing key'),
    });
    const published = performance.now();
    issuer.keys = [first.jwk, next.jwk];
    const whoAmI = await eventually(
      () => rotated.admin.whoAmI({}),
      (value) => !(value instanceof Error),
      5_000,
      100,
    );
    console.info(
      `rotated JWKS key accepted ${(performance.now() - published).toFixed(0)} ms after publication`,
    );
    expect(whoAmI).toMatchObject({ principal: 'jwt:bob', method: 'jwt' });
    // Tokens of the first key still verify.
    expect((await (await as({ sub: 'alice' })).admin.whoAmI({})).principal).toBe('jwt:alice');
  });
});

/** Replaces a file as a deployment should: a temp file beside it, then rename. */
async function replaceByRename(source: string, target: string): Promise<void> {
  const temporary = `${target}.tmp-${process.pid}`;
  await copyFile(source, temporary);
  await rename(temporary, target);
}

/** The certificate a TLS port serves to a new connection (ALPN h2, like a gRPC client). */
async function servedCertificate(port: number, ca: Buffer): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const socket: TLSSocket = tlsConnect(
      { host: '127.0.0.1', port, ca, servername: 'localhost', ALPNProtocols: ['h2'] },
      () => {
        const certificate = socket.getPeerCertificate();
        socket.destroy();
        resolve(certificate);
      },
    );
    socket.once('error', reject);
  });
}

function httpsGet(url: string, ca: Buffer): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = httpsRequest(url, { ca, servername: 'localhost', agent: false }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => {
        body += chunk;
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.once('error', reject);
    request.end();
  });
}

const portOf = (address: string) => Number(address.slice(address.lastIndexOf(':') + 1));

describe('TLS and mTLS through fstore serve', () => {
  let pki: TestPki;
  let alice: CertificatePair;
  /** Issued by another CA, yet named in the bindings: it must never authenticate. */
  let mallory: CertificatePair;
  let server: TestServer;
  let strict: TestServer;
  let adminKey: string;
  let strictAdminKey: string;
  let ca: Buffer;
  const live = { cert: '', key: '' };
  const project = randomName('p');
  const elsewhere = randomName('p');

  const withCertificate = () =>
    createChannelCredentials({ caFile: pki.caCert, certFile: alice.cert, keyFile: alice.key });
  const withoutCertificate = () => createChannelCredentials({ caFile: pki.caCert });

  beforeAll(async () => {
    pki = await createTestPki();
    alice = await pki.clientCert('alice');
    mallory = await pki.otherCa.clientCert('mallory');
    ca = await readFile(pki.caCert);
    live.cert = join(pki.dir, 'serve-live.crt');
    live.key = join(pki.dir, 'serve-live.key');
    await copyFile(pki.serverCert, live.cert);
    await copyFile(pki.serverKey, live.key);
    const tls = {
      auth: 'on',
      tlsKeyFile: live.key,
      tlsCertFile: live.cert,
      tlsClientCaFile: pki.caCert,
      tlsReloadIntervalMs: 200,
      authBindings: `cert:alice=reader@${project};cert:mallory=admin@*`,
    };
    server = await startTestServer('redis', { ...tls, tlsClientCertificate: 'optional' });
    strict = await startTestServer('redis', {
      ...tls,
      tlsCertFile: pki.serverCert,
      tlsKeyFile: pki.serverKey,
      tlsClientCertificate: 'require',
    });
    adminKey = (await bootstrapAdmin(server, createChannelCredentials({ caFile: pki.caCert }))).key;
    strictAdminKey = (
      await bootstrapAdmin(
        strict, // a schema of its own
        createChannelCredentials({ caFile: pki.caCert, certFile: alice.cert, keyFile: alice.key }),
      )
    ).key;
  });
  afterAll(async () => {
    await server?.stop();
    await strict?.stop();
    await pki?.remove();
  });

  it('an API key over TLS works; a verified client certificate is a principal bound by its CN', async () => {
    const admin = clientsOf(server.address, { credential: adminKey, credentials: withoutCertificate() });
    await applyScores(admin.registry, project);
    expect(await admin.admin.whoAmI({})).toMatchObject({
      method: 'api_key',
      principal: expect.stringMatching(/^key:/),
    });

    const asAlice = clientsOf(server.address, { credentials: withCertificate() });
    expect((await asAlice.registry.listFeatureViews({ project })).featureViews.map((v) => v.name)).toEqual([
      'scores',
    ]);
    expect(await failureOf(asAlice.registry.listFeatureViews({ project: elsewhere }))).toMatchObject({
      code: 'permission_denied',
      message: expect.stringContaining('cert:alice'),
    });
    expect(await failureOf(writeScore(asAlice.features, project, 'x', 1))).toMatchObject({
      code: 'permission_denied',
    });
    const whoAmI = await asAlice.admin.whoAmI({});
    expect(whoAmI).toMatchObject({ principal: 'cert:alice', method: 'certificate' });
    expect(whoAmI.bindings.map((binding) => [binding.role, binding.project])).toEqual([
      [Role.READER, project],
    ]);
  });

  it('refuses a TLS client with neither certificate nor key, and a plaintext client', async () => {
    const nobody = clientsOf(server.address, { credentials: withoutCertificate() });
    expect(await failureOf(nobody.registry.listFeatureViews({ project }))).toMatchObject({
      code: 'unauthenticated',
      message: expect.stringContaining('no credentials'),
    });
    const plaintext = clientsOf(server.address, { credential: adminKey });
    expect(await failureOf(plaintext.admin.whoAmI({}, { timeoutMs: 5_000 }))).toMatchObject({
      code: 'unavailable',
    });
    // A certificate the client CA did not sign is no credential, whatever its name is bound to.
    const stranger = clientsOf(server.address, {
      credentials: createChannelCredentials({
        caFile: pki.caCert,
        certFile: mallory.cert,
        keyFile: mallory.key,
      }),
    });
    expect(await failureOf(stranger.admin.whoAmI({}))).toMatchObject({
      code: 'unauthenticated',
      message: expect.stringContaining('no credentials'),
    });
  });

  it('serves the metrics port over HTTPS with the same certificate', async () => {
    expect(server.metricsUrl).toBeDefined();
    const httpsUrl = `${server.metricsUrl!.replace(/^http:/, 'https:')}/healthz`;
    expect(await httpsGet(httpsUrl, ca)).toMatchObject({ status: 200, body: 'ok\n' });
    // Not trusted without the test CA.
    await expect(httpsGet(httpsUrl, Buffer.from(await readFile(pki.otherCa.caCert)))).rejects.toThrow();
  });

  it('with FSTORE_TLS_CLIENT_CERT=require, refuses a client without a certificate at the handshake', async () => {
    const nobody = clientsOf(strict.address, {
      credential: strictAdminKey,
      credentials: withoutCertificate(),
    });
    expect(await failureOf(nobody.admin.whoAmI({}, { timeoutMs: 5_000 }))).toMatchObject({
      code: 'unavailable',
    });
    const stranger = clientsOf(strict.address, {
      credentials: createChannelCredentials({
        caFile: pki.caCert,
        certFile: mallory.cert,
        keyFile: mallory.key,
      }),
    });
    expect(await failureOf(stranger.admin.whoAmI({}, { timeoutMs: 5_000 }))).toMatchObject({
      code: 'unavailable',
    });
    const asAlice = clientsOf(strict.address, { credentials: withCertificate() });
    expect(await asAlice.admin.whoAmI({})).toMatchObject({ principal: 'cert:alice', method: 'certificate' });
    // With a certificate, an explicit key still wins (a narrower or wider identity on purpose).
    const both = clientsOf(strict.address, { credential: strictAdminKey, credentials: withCertificate() });
    expect(await both.admin.whoAmI({})).toMatchObject({ method: 'api_key' });
  });

  it('serves a certificate replaced by rename to new connections, without a restart', async () => {
    const port = portOf(server.address);
    const before = await servedCertificate(port, ca);
    expect(before.serialNumber).toBe(new X509Certificate(await readFile(pki.serverCert)).serialNumber);
    const next = await pki.issueServerCert({ commonName: 'localhost-rotated' });
    const nextSerial = new X509Certificate(await readFile(next.cert)).serialNumber;
    expect(nextSerial).not.toBe(before.serialNumber);
    const started = performance.now();
    await replaceByRename(next.key, live.key);
    await replaceByRename(next.cert, live.cert);
    const after = await eventually(
      () => servedCertificate(port, ca),
      (value) => !(value instanceof Error) && (value as PeerCertificate).serialNumber !== before.serialNumber,
      5_000,
    );
    console.info(`new server certificate served after ${(performance.now() - started).toFixed(0)} ms`);
    expect(after.serialNumber).toBe(nextSerial);
    expect(after.subject.CN).toBe('localhost-rotated');
    // New connections work with it, mTLS included; the metrics port reloads too.
    const asAlice = clientsOf(server.address, { credentials: withCertificate() });
    expect(await asAlice.admin.whoAmI({})).toMatchObject({ principal: 'cert:alice' });
    const httpsUrl = `${server.metricsUrl!.replace(/^http:/, 'https:')}/healthz`;
    await eventually(
      async () => {
        const socketCertificate = await new Promise<PeerCertificate>((resolve, reject) => {
          const request = httpsRequest(
            httpsUrl,
            { ca, servername: 'localhost', agent: false },
            (response) => {
              resolve((response.socket as TLSSocket).getPeerCertificate());
              response.resume();
            },
          );
          request.once('error', reject);
          request.end();
        });
        return socketCertificate.serialNumber;
      },
      (serial) => serial === nextSerial,
      5_000,
    );
  });
});
