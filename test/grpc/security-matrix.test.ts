import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { create, type DescMethod, type DescService } from '@bufbuild/protobuf';
import { Metadata } from '@grpc/grpc-js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminService, Role } from '../../gen/fstore/v1/admin_pb.js';
import { FeatureService } from '../../gen/fstore/v1/feature_service_pb.js';
import { MonitoringService } from '../../gen/fstore/v1/monitoring_pb.js';
import { RegistryService } from '../../gen/fstore/v1/registry_pb.js';
import { ValueType } from '../../gen/fstore/v1/values_pb.js';
import { assertSafeListeners, type ConfigKey, loadConfig } from '../../src/config/config.js';
import { permissions } from '../../src/domain/access.js';
import { FStoreError } from '../../src/domain/errors.js';
import { createClient } from '../../src/grpc/client.js';
import { rpcPermissions } from '../../src/grpc/rpc-permissions.js';
import { generateApiKey } from '../../src/security/api-keys.js';
import { randomName, requireEnvironment } from '../support/environment.js';
import { seededRandom } from '../support/fixtures.js';
import { checkHealth, reflect } from '../support/grpc-probes.js';
import {
  adminClientFor,
  bootstrapKey,
  containsPartOf,
  createKey,
  keyMetadata,
  metadataOf,
  secretOf,
  startHeaderInjector,
} from '../support/security.js';
import { dropSchema, startTestServer, type TestServer } from '../support/serving-harness.js';

/**
 * Authentication and per-project authorization, end to end: every RPC of every FStore service ×
 * {no credentials, reader, writer, admin of project A} × {A, B} through real gRPC against real
 * PostgreSQL and Redis; isolation of another project's data and keys; every way a credential can
 * be wrong (and fuzzed ones); safe listener defaults; health and reflection without credentials.
 */

// --- What each role may do, restated here (not read from src/domain/access.ts) -----------------

type TestRole = 'reader' | 'writer' | 'admin';
const readerPermissions = ['online.read', 'historical.read', 'registry.read', 'monitoring.read'];
const writerPermissions = [...readerPermissions, 'online.write', 'offline.ingest', 'online.materialize'];
const adminPermissions = [
  ...writerPermissions,
  'registry.write',
  'stream.write',
  'profiles.write',
  'keys.manage',
  'audit.read',
];
const permissionsOf: Record<TestRole, readonly string[]> = {
  reader: readerPermissions,
  writer: writerPermissions,
  admin: adminPermissions,
};

const services: readonly DescService[] = [FeatureService, RegistryService, MonitoringService, AdminService];
const fullNameOf = (service: DescService, method: DescMethod) => `${service.typeName}/${method.name}`;

// --- A minimal, harmless request per RPC, naming the target project ---------------------------

/**
 * `project`: the call acts on the project its request names; `anywhere`: it spans projects (the
 * permission held on some project admits it, the answer is filtered); `authenticated`: any
 * authenticated caller. Requests name objects that do not exist, so an admitted call changes
 * nothing (NOT_FOUND / INVALID_ARGUMENT are fine outcomes).
 */
type Scope = 'project' | 'anywhere' | 'authenticated';
interface MatrixCall {
  readonly scope: Scope;
  /** The request (unary, server streaming) or the messages (client / bidi streaming). */
  readonly input: (project: string) => unknown;
}

const missing = 'no_such_object';
const byProject = (extra: Record<string, unknown> = {}): MatrixCall => ({
  scope: 'project',
  input: (project) => ({ project, ...extra }),
});
const named = byProject({ name: missing });
const ofView = byProject({ featureView: missing });

const matrixCalls: Record<string, MatrixCall> = {
  'fstore.v1.FeatureService/GetOnlineFeatures': byProject({ features: [`${missing}:x`] }),
  'fstore.v1.FeatureService/WriteOnlineFeatures': ofView,
  'fstore.v1.FeatureService/IngestFeatures': {
    scope: 'project',
    input: (project) => [
      { message: { case: 'header', value: { project, featureView: missing } } },
      { message: { case: 'end', value: { rowCount: 0n } } },
    ],
  },
  'fstore.v1.FeatureService/Materialize': byProject({ featureViews: [missing] }),
  'fstore.v1.FeatureService/GetHistoricalFeatures': {
    scope: 'project',
    input: (project) => [
      { message: { case: 'query', value: { project, features: [`${missing}:x`] } } },
      { message: { case: 'end', value: { rowCount: 0n } } },
    ],
  },
  'fstore.v1.RegistryService/ApplyEntity': byProject(),
  'fstore.v1.RegistryService/GetEntity': named,
  'fstore.v1.RegistryService/ListEntities': byProject(),
  'fstore.v1.RegistryService/DeleteEntity': named,
  'fstore.v1.RegistryService/ApplyFeatureView': byProject(),
  'fstore.v1.RegistryService/GetFeatureView': named,
  'fstore.v1.RegistryService/ListFeatureViews': byProject(),
  'fstore.v1.RegistryService/ListFeatureViewVersions': named,
  'fstore.v1.RegistryService/DeleteFeatureView': named,
  'fstore.v1.RegistryService/ApplyFeatureSet': byProject(),
  'fstore.v1.RegistryService/GetFeatureSet': named,
  'fstore.v1.RegistryService/ListFeatureSets': byProject(),
  'fstore.v1.RegistryService/DeleteFeatureSet': named,
  'fstore.v1.RegistryService/ApplyStreamAggregation': byProject(),
  'fstore.v1.RegistryService/GetStreamAggregation': named,
  'fstore.v1.RegistryService/ListStreamAggregations': byProject(),
  'fstore.v1.RegistryService/DeleteStreamAggregation': named,
  'fstore.v1.RegistryService/ListProjects': { scope: 'anywhere', input: () => ({}) },
  'fstore.v1.MonitoringService/ComputeProfile': ofView,
  'fstore.v1.MonitoringService/SaveReferenceProfile': byProject({ name: missing, featureView: missing }),
  'fstore.v1.MonitoringService/GetReferenceProfile': named,
  'fstore.v1.MonitoringService/ListReferenceProfiles': byProject(),
  'fstore.v1.MonitoringService/DeleteReferenceProfile': named,
  'fstore.v1.MonitoringService/GetDriftReport': ofView,
  'fstore.v1.MonitoringService/GetDataQualityReport': ofView,
  // An empty name: refused before any key is made.
  'fstore.v1.AdminService/CreateApiKey': {
    scope: 'anywhere',
    input: (project) => ({ name: '', bindings: [{ role: Role.READER, project }] }),
  },
  'fstore.v1.AdminService/ListApiKeys': { scope: 'anywhere', input: (project) => ({ project }) },
  'fstore.v1.AdminService/RevokeApiKey': { scope: 'anywhere', input: () => ({ id: 'aaaaaaaaaaaa' }) },
  'fstore.v1.AdminService/ListAuditEvents': byProject({ limit: 1 }),
  'fstore.v1.AdminService/WhoAmI': { scope: 'authenticated', input: () => ({}) },
};

/** RPCs that change something: no reader permission may ever admit them. */
const mutating = /^(Apply|Delete|Save|Create|Revoke|Write|Ingest|Materialize)/;

// --- Calling any method of any service through the real client --------------------------------

interface Outcome {
  readonly code: string;
  readonly message: string;
}

type AnyClient = Record<string, unknown> & { close(): void };

async function invoke(
  client: AnyClient,
  method: DescMethod,
  input: unknown,
  metadata: Metadata,
): Promise<Outcome> {
  const call = client[method.localName] as (input: unknown, options: object) => unknown;
  const options = { metadata, timeoutMs: 15_000 };
  try {
    if (method.methodKind === 'unary' || method.methodKind === 'client_streaming')
      await (call(input, options) as Promise<unknown>);
    else for await (const _ of call(input, options) as AsyncIterable<unknown>);
    return { code: 'ok', message: '' };
  } catch (error) {
    if (error instanceof FStoreError) return { code: error.code, message: error.message };
    throw error;
  }
}

/** What a test expects of a call: refused at authentication, refused at authorization, or admitted. */
type Expected = 'UNAUTHENTICATED' | 'PERMISSION_DENIED' | 'admitted';

function classify(outcome: Outcome): string {
  if (outcome.code === 'unauthenticated') return 'UNAUTHENTICATED';
  if (outcome.code === 'permission_denied') return 'PERMISSION_DENIED';
  // Never a crash, whoever calls: INTERNAL / UNKNOWN are bugs even when the call was admitted.
  if (outcome.code === 'internal' || outcome.code === 'unknown')
    return `BROKEN ${outcome.code}: ${outcome.message}`;
  return 'admitted';
}

async function failureOf(promise: Promise<unknown>): Promise<Outcome> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof FStoreError) return { code: error.code, message: error.message };
    throw error;
  }
  return { code: 'ok', message: '' };
}

// --- One server with authentication on, shared by the tests ----------------------------------

let server: TestServer;
let root: { key: string; id: string };
const projectA = randomName('pa');
const projectB = randomName('pb');
const keys = {} as Record<TestRole, { key: string; id: string }>;
const rootClients = {} as {
  admin: ReturnType<typeof adminClientFor>;
  registry: ReturnType<typeof createClient<typeof RegistryService>>;
};
const clients = new Map<DescService, AnyClient>();

beforeAll(async () => {
  server = await startTestServer('redis', { auth: 'on' });
  root = await bootstrapKey(server);
  rootClients.admin = adminClientFor(server, root.key);
  rootClients.registry = createClient(RegistryService, server.address, { metadata: keyMetadata(root.key) });
  for (const role of ['reader', 'writer', 'admin'] as const)
    keys[role] = await createKey(rootClients.admin, `${role} of A`, [{ role, project: projectA }]);
  for (const service of services)
    clients.set(service, createClient(service, server.address) as unknown as AnyClient);
});

afterAll(async () => {
  for (const client of clients.values()) client.close();
  rootClients.admin?.close();
  rootClients.registry?.close();
  await server?.stop();
});

describe('the RPC → permission table', () => {
  it('has an entry for every RPC of every service, and none for an RPC that does not exist', () => {
    const rpcs = services.flatMap((service) => service.methods.map((method) => fullNameOf(service, method)));
    expect(rpcs.filter((rpc) => !(rpc in rpcPermissions))).toEqual([]);
    expect(Object.keys(rpcPermissions).filter((rpc) => !rpcs.includes(rpc))).toEqual([]);
    // This test knows how to call each of them, too.
    expect(rpcs.filter((rpc) => !(rpc in matrixCalls))).toEqual([]);
  });

  it('asks only for known permissions, never a reader one for a change, and reads the project each request names', () => {
    // The domain's permissions are the ones restated above (admin holds every one).
    expect([...permissions].sort()).toEqual([...adminPermissions].sort());
    for (const service of services)
      for (const method of service.methods) {
        const rpc = fullNameOf(service, method);
        const entry = rpcPermissions[rpc];
        const call = matrixCalls[rpc];
        if (!entry || !call) continue; // reported by the test above
        if (entry.permission !== null) expect(adminPermissions, rpc).toContain(entry.permission);
        if (mutating.test(method.name)) expect(readerPermissions, rpc).not.toContain(entry.permission);
        expect(entry.permission === null, rpc).toBe(call.scope === 'authenticated');
        const input = call.input('some_project');
        const first = create(method.input, (Array.isArray(input) ? input[0] : input) as never);
        expect(entry.project(first as never), rpc).toBe(
          call.scope === 'project' ? 'some_project' : undefined,
        );
      }
  });
});

describe('authorization matrix: every RPC × {none, reader@A, writer@A, admin@A} × {A, B}', () => {
  const principals = ['none', 'reader', 'writer', 'admin'] as const;
  const expectedOf = (
    principal: (typeof principals)[number],
    permission: string | null,
    scope: Scope,
    target: string,
  ): Expected => {
    if (principal === 'none') return 'UNAUTHENTICATED';
    if (permission === null) return 'admitted';
    if (!permissionsOf[principal].includes(permission)) return 'PERMISSION_DENIED';
    // Every key here is bound to A only.
    return scope === 'anywhere' || target === projectA ? 'admitted' : 'PERMISSION_DENIED';
  };

  for (const service of services)
    for (const method of service.methods) {
      const rpc = fullNameOf(service, method);
      it(rpc, async () => {
        const entry = rpcPermissions[rpc];
        const call = matrixCalls[rpc];
        expect(entry, `${rpc} has no entry in rpcPermissions`).toBeDefined();
        expect(call, `${rpc}: add a minimal request to matrixCalls in this test`).toBeDefined();
        if (!entry || !call) return;
        const client = clients.get(service) as AnyClient;
        const actual: string[] = [];
        const expected: string[] = [];
        for (const principal of principals)
          for (const target of [projectA, projectB]) {
            const metadata = principal === 'none' ? new Metadata() : keyMetadata(keys[principal].key);
            const outcome = await invoke(client, method, call.input(target), metadata);
            const label = `${principal} → ${target === projectA ? 'A' : 'B'}`;
            const want = expectedOf(principal, entry.permission, call.scope, target);
            actual.push(`${label}: ${classify(outcome)}`);
            expected.push(`${label}: ${want}`);
            if (outcome.code === 'permission_denied' && want === 'PERMISSION_DENIED') {
              // Names what is missing and where, nothing else.
              expect(outcome.message, label).toContain(String(entry.permission));
              if (call.scope === 'project') expect(outcome.message, label).toContain(`"${target}"`);
              expect(outcome.message, label).toContain(`key:${keys[principal as TestRole].id}`);
            }
            if (outcome.code === 'unauthenticated' && want === 'UNAUTHENTICATED')
              expect(outcome.message, label).toMatch(/^no credentials/);
          }
        expect(actual).toEqual(expected);
      });
    }

  it('ListAuditEvents of every project needs admin on all projects', async () => {
    const admin = adminClientFor(server, keys.admin.key);
    try {
      const refused = await failureOf(admin.listAuditEvents({ project: '', limit: 1 }));
      expect(refused.code).toBe('permission_denied');
      expect(refused.message).toContain('audit.read');
      expect(refused.message).toContain('all projects');
      const all = await rootClients.admin.listAuditEvents({ project: '', limit: 1000 });
      expect(all.events.length).toBeGreaterThan(0);
    } finally {
      admin.close();
    }
  });
});

describe('isolation between projects', () => {
  const entityA = randomName('ent_a');
  const viewA = randomName('view_a');
  const entityB = randomName('secret_ent_b');
  const viewB = randomName('secret_view_b');
  let readerB: { key: string; id: string };
  let mixed: { key: string; id: string };
  const secrets = () => [root, keys.reader, keys.writer, keys.admin, readerB, mixed].map(({ key }) => key);

  beforeAll(async () => {
    for (const [project, entity, view] of [
      [projectA, entityA, viewA],
      [projectB, entityB, viewB],
    ] as const) {
      await rootClients.registry.applyEntity({
        project,
        entity: { name: entity, joinKeys: [{ name: 'id', type: ValueType.STRING }] },
      });
      await rootClients.registry.applyFeatureView({
        project,
        featureView: {
          name: view,
          entities: [entity],
          online: true,
          features: [{ name: 'amount', type: ValueType.DOUBLE }],
        },
      });
    }
    readerB = await createKey(rootClients.admin, 'reader of B', [{ role: 'reader', project: projectB }]);
    mixed = await createKey(rootClients.admin, 'reader of A and B', [
      { role: 'reader', project: projectA },
      { role: 'reader', project: projectB },
    ]);
  });

  /** Neither B's object names nor any key's secret. */
  const expectNothingOfB = (text: string) => {
    expect(text).not.toContain(entityB);
    expect(text).not.toContain(viewB);
    for (const key of secrets()) expect(containsPartOf(text, secretOf(key))).toBe(false);
  };

  it('lists only the projects the caller may read', async () => {
    const registry = createClient(RegistryService, server.address, {
      metadata: keyMetadata(keys.reader.key),
    });
    try {
      expect((await registry.listProjects({})).projects).toEqual([projectA]);
      expect((await rootClients.registry.listProjects({})).projects.sort()).toEqual(
        [projectA, projectB].sort(),
      );
      // Reads in A work; in B they are refused without naming what is there.
      expect((await registry.getFeatureView({ project: projectA, name: viewA })).featureView?.name).toBe(
        viewA,
      );
      for (const refused of [
        await failureOf(registry.getFeatureView({ project: projectB, name: viewB })),
        await failureOf(registry.listFeatureViews({ project: projectB })),
        await failureOf(registry.listEntities({ project: projectB })),
      ]) {
        expect(refused.code).toBe('permission_denied');
        expect(refused.message).toContain('registry.read');
        expect(refused.message).toContain(`"${projectB}"`);
        expect(refused.message).not.toContain(viewB);
        expect(refused.message).not.toContain(entityB);
      }
    } finally {
      registry.close();
    }
  });

  it("a project admin sees and manages only its own project's keys", async () => {
    const adminA = adminClientFor(server, keys.admin.key);
    try {
      const listed = await adminA.listApiKeys({ project: '' });
      for (const key of listed.keys)
        expect(
          key.bindings.every((binding) => binding.project === projectA),
          JSON.stringify(key.bindings),
        ).toBe(true);
      const ids = listed.keys.map((key) => key.id);
      expect(ids).toEqual(expect.arrayContaining([keys.reader.id, keys.writer.id, keys.admin.id]));
      for (const other of [root.id, readerB.id, mixed.id]) expect(ids).not.toContain(other);
      expect((await adminA.listApiKeys({ project: projectB })).keys).toEqual([]);
      expectNothingOfB(
        JSON.stringify(listed, (_, value) => (typeof value === 'bigint' ? String(value) : value)),
      );

      const messages: string[] = [];
      for (const bindings of [
        [{ role: Role.READER, project: projectB }],
        [{ role: Role.ADMIN, project: projectB }],
        [{ role: Role.READER, project: '*' }],
        [
          { role: Role.READER, project: projectA },
          { role: Role.READER, project: projectB },
        ],
      ]) {
        const refused = await failureOf(adminA.createApiKey({ name: 'escalation attempt', bindings }));
        expect(refused.code, JSON.stringify(bindings)).toBe('permission_denied');
        expect(refused.message).toContain('keys.manage');
        messages.push(refused.message);
      }
      for (const id of [readerB.id, mixed.id, root.id]) {
        const refused = await failureOf(adminA.revokeApiKey({ id }));
        expect(refused.code, id).toBe('permission_denied');
        expect(refused.message).toContain('keys.manage');
        messages.push(refused.message);
      }
      for (const message of messages) expectNothingOfB(message);

      // Nothing happened: no key was made, none revoked.
      const all = await rootClients.admin.listApiKeys({ project: '', includeRevoked: true });
      expect(all.keys.filter((key) => key.name === 'escalation attempt')).toEqual([]);
      for (const id of [readerB.id, mixed.id, root.id])
        expect(all.keys.find((key) => key.id === id)?.revokedAt, id).toBeUndefined();
      const whoB = adminClientFor(server, readerB.key);
      expect((await whoB.whoAmI({})).principal).toBe(`key:${readerB.id}`);
      whoB.close();

      // Its own project's keys it does manage.
      const made = await createKey(adminA, 'made by admin of A', [{ role: 'reader', project: projectA }]);
      expect((await adminA.revokeApiKey({ id: made.id })).key?.revokedAt).toBeDefined();
    } finally {
      adminA.close();
    }
  });

  it("a project admin reads only its own project's audit events", async () => {
    const adminA = adminClientFor(server, keys.admin.key);
    try {
      const events = (await adminA.listAuditEvents({ project: projectA, limit: 1000 })).events;
      expect(events.length).toBeGreaterThan(0);
      expect(events.every((event) => event.project === projectA)).toBe(true);
      const refused = await failureOf(adminA.listAuditEvents({ project: projectB, limit: 10 }));
      expect(refused.code).toBe('permission_denied');
      expectNothingOfB(refused.message);
    } finally {
      adminA.close();
    }
  });
});

/** `size` random printable ASCII characters (seeded). */
function printableText(size: number, seed: number): string {
  const random = seededRandom(seed);
  let text = '';
  for (let index = 0; index < size; index++) text += String.fromCharCode(32 + Math.floor(random() * 95));
  return text;
}

describe('refused credentials', () => {
  const whoAmI = async (metadata: Metadata, address = server.address): Promise<Outcome> => {
    const client = createClient(AdminService, address);
    try {
      const response = await client.whoAmI({}, { metadata, timeoutMs: 10_000 });
      return { code: 'ok', message: response.principal };
    } catch (error) {
      if (error instanceof FStoreError) return { code: error.code, message: error.message };
      throw error;
    } finally {
      client.close();
    }
  };

  it('says what is wrong, one message per problem, never any part of the secret', async () => {
    const reader = keys.reader;
    const unknown = generateApiKey().key;
    const wrongSecret = `fsk_${reader.id}_${secretOf(generateApiKey().key)}`;
    const revoked = await createKey(rootClients.admin, 'to revoke', [{ role: 'reader', project: projectA }]);
    expect((await whoAmI(keyMetadata(revoked.key))).code).toBe('ok');
    await rootClients.admin.revokeApiKey({ id: revoked.id });

    const cases: [string, Metadata, string, RegExp][] = [
      ['no credentials', new Metadata(), '', /^no credentials/],
      ['malformed', keyMetadata('fsk_nope'), 'nope', /malformed/],
      ['unknown key', keyMetadata(unknown), secretOf(unknown), /unknown key or wrong secret/],
      ['wrong secret', keyMetadata(wrongSecret), secretOf(wrongSecret), /unknown key or wrong secret/],
      ['revoked', keyMetadata(revoked.key), secretOf(revoked.key), /revoked/],
      ['basic', metadataOf([['authorization', 'Basic xyz']]), 'xyz', /expected "Bearer/],
      [
        'authorization and x-api-key',
        metadataOf([
          ['authorization', `Bearer ${reader.key}`],
          ['x-api-key', reader.key],
        ]),
        secretOf(reader.key),
        /both authorization and x-api-key/,
      ],
    ];
    const messages = new Map<string, string>();
    for (const [label, metadata, secret, pattern] of cases) {
      const outcome = await whoAmI(metadata);
      expect(outcome.code, label).toBe('unauthenticated');
      expect(outcome.message, label).toMatch(pattern);
      expect(containsPartOf(outcome.message, secret, 4), `${label}: ${outcome.message}`).toBe(false);
      messages.set(label, outcome.message);
    }
    // A wrong secret is not told from an unknown id (no oracle for valid ids)...
    expect(messages.get('wrong secret')).toBe(messages.get('unknown key'));
    // ... and every other problem has its own message.
    messages.delete('wrong secret');
    expect(new Set(messages.values()).size).toBe(messages.size);
    // The real key still works.
    expect(await whoAmI(keyMetadata(reader.key))).toEqual({ code: 'ok', message: `key:${reader.id}` });
  });

  it('refuses an expired key once it expires, saying so', async () => {
    const expiresAt = new Date(Date.now() + 1_500);
    const expiring = await createKey(
      rootClients.admin,
      'short-lived',
      [{ role: 'reader', project: projectA }],
      expiresAt,
    );
    expect(await whoAmI(keyMetadata(expiring.key))).toEqual({ code: 'ok', message: `key:${expiring.id}` });
    let outcome: Outcome;
    const deadline = Date.now() + 8_000;
    for (;;) {
      outcome = await whoAmI(keyMetadata(expiring.key));
      if (outcome.code !== 'ok' || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(Date.now()).toBeGreaterThanOrEqual(expiresAt.getTime());
    expect(outcome.code).toBe('unauthenticated');
    expect(outcome.message).toMatch(/expired/);
    expect(containsPartOf(outcome.message, secretOf(expiring.key), 4)).toBe(false);
  });

  it('takes only the first of two authorization headers: a second credential is never tried', async () => {
    // grpc-js clients will not send two authorization values, so a relay appends a second one
    // to the client's request headers, as a misbehaving client or proxy could.
    const garbage = generateApiKey().key;
    // The relay works: a header it appends reaches the server.
    const control = await startHeaderInjector(server.address, [['x-api-key', garbage]]);
    try {
      const outcome = await whoAmI(keyMetadata(keys.reader.key), control.address);
      expect(outcome.code).toBe('unauthenticated');
      expect(outcome.message).toMatch(/both authorization and x-api-key/);
    } finally {
      await control.close();
    }
    const injector = await startHeaderInjector(server.address, [['authorization', `Bearer ${garbage}`]]);
    try {
      const outcome = await whoAmI(keyMetadata(keys.reader.key), injector.address);
      // Node's http2 module keeps only the first of several `authorization` headers (a
      // single-value header to it), so the authenticator never sees the second: the call is
      // what the FIRST credential allows, and a second one is never tried (next check).
      expect(outcome.code, outcome.message).toBe('ok');
      expect(outcome.message).not.toContain(garbage);
      expect(containsPartOf(outcome.message, secretOf(garbage), 4)).toBe(false);
    } finally {
      await injector.close();
    }
    // Garbage first, a valid key appended: refused, the valid key is not tried.
    const appendsValid = await startHeaderInjector(server.address, [
      ['authorization', `Bearer ${keys.reader.key}`],
    ]);
    try {
      const outcome = await whoAmI(keyMetadata(garbage), appendsValid.address);
      expect(outcome.code).toBe('unauthenticated');
      expect(containsPartOf(outcome.message, secretOf(keys.reader.key), 4)).toBe(false);
    } finally {
      await appendsValid.close();
    }
  });

  it('fuzzed credentials are refused as UNAUTHENTICATED, never a crash, and the server keeps answering', async () => {
    const client = createClient(AdminService, server.address);
    const base64url = fc.string({
      unit: fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'),
      maxLength: 80,
    });
    // Small values: anything a credential could look like.
    const smallValue = fc.oneof(
      fc.string({ unit: 'grapheme-ascii', maxLength: 200 }),
      fc.string({ unit: 'grapheme', maxLength: 100 }),
      fc.string({ unit: 'binary', maxLength: 100 }),
      fc.stringMatching(/^fsk_[a-z2-7]{12}_[A-Za-z0-9_-]{43}$/),
      base64url.map((rest) => `fsk_${rest}`),
      fc.tuple(base64url, base64url, base64url).map((parts) => parts.join('.')),
    );
    // Huge: up to 64 KiB, alone (a header field longer than that once encoded, or a header
    // block beyond ~128 KiB in all, is refused by HTTP/2 itself: see the next test).
    const hugeValue = fc
      .record({ size: fc.integer({ min: 1, max: 64 * 1024 - 7 }), seed: fc.integer() })
      .map(({ size, seed }) => printableText(size, seed));
    const headerValue = fc.oneof(smallValue, hugeValue);
    type Header = [string, string | Buffer];
    const credential = fc.oneof(
      headerValue.map((value): Header[] => [['authorization', `Bearer ${value}`]]),
      headerValue.map((value): Header[] => [['authorization', value]]),
      headerValue.map((value): Header[] => [['x-api-key', value]]),
      // Many headers: up to 50 x-api-key values (HTTP/2 joins them into one).
      fc
        .array(smallValue, { minLength: 2, maxLength: 50 })
        .map((values) => values.map((value): Header => ['x-api-key', value])),
      fc.tuple(smallValue, smallValue).map(([bearer, key]): Header[] => [
        ['authorization', `Bearer ${bearer}`],
        ['x-api-key', key],
      ]),
      // Binary headers, up to 48 KiB (64 KiB once base64-encoded on the wire).
      fc
        .tuple(
          fc.constantFrom('authorization-bin', 'x-api-key-bin', 'fsk-bin'),
          fc.uint8Array({ maxLength: 48 * 1024 }),
        )
        .map(([key, bytes]): Header[] => [[key, Buffer.from(bytes)]]),
    );
    try {
      await fc.assert(
        fc.asyncProperty(credential, async (headers) => {
          const metadata = new Metadata();
          for (const [key, value] of headers) {
            try {
              metadata.add(key, value);
            } catch (error) {
              // grpc-js sends printable ASCII only; anything else goes as the UTF-8 of a -bin header.
              expect((error as Error).message).toMatch(/illegal characters/);
              metadata.add(`${key}-bin`, Buffer.from(String(value), 'utf8'));
            }
          }
          const outcome = await failureOf(client.whoAmI({}, { metadata, timeoutMs: 10_000 }));
          expect(outcome.code, outcome.message).toBe('unauthenticated');
          for (const [, value] of headers)
            if (typeof value === 'string' && value.length >= 12)
              expect(containsPartOf(outcome.message, value, 12), outcome.message).toBe(false);
        }),
        { numRuns: 200, interruptAfterTimeLimit: 30_000 },
      );
      expect((await client.whoAmI({}, { metadata: keyMetadata(keys.reader.key) })).principal).toBe(
        `key:${keys.reader.id}`,
      );
    } finally {
      client.close();
    }
  }, 60_000);

  it('metadata beyond HTTP/2 limits is refused by the transport and the server keeps answering', async () => {
    // Not FStore's code: Node's HTTP/2 layer (nghttp2) resets a stream whose header field is
    // longer than 64 KiB once encoded (grpc-js clients report that reset as INTERNAL, "Received
    // RST_STREAM with code 9"), refuses more than 128 header fields (RESOURCE_EXHAUSTED), and
    // closes a connection whose header block is huge. The call never reaches FStore; what
    // matters is that nothing is authenticated and the server goes on serving.
    const cases: [string, [string, string][]][] = [
      ['a 70 KiB field', [['x-api-key', '\\'.repeat(70_000)]]],
      ['200 fields', Array.from({ length: 200 }, (_, index): [string, string] => [`x-h${index}`, 'v'])],
      [
        '3 fields of 60 KB',
        Array.from({ length: 3 }, (_, index): [string, string] => [
          'x-api-key',
          printableText(60_000, index),
        ]),
      ],
      [
        '1.2 MB of fields',
        Array.from({ length: 20 }, (_, index): [string, string] => [`x-h${index}`, 'w'.repeat(60_000)]),
      ],
    ];
    for (const [label, headers] of cases) {
      const client = createClient(AdminService, server.address);
      const outcome = await failureOf(
        client.whoAmI({}, { metadata: metadataOf(headers), timeoutMs: 10_000 }),
      );
      client.close();
      expect(outcome.code, label).not.toBe('ok');
      if (outcome.code === 'internal' || outcome.code === 'unknown')
        expect(outcome.message, label).toMatch(/RST_STREAM|Session closed/);
      else expect(['unauthenticated', 'resource_exhausted'], label).toContain(outcome.code);
      const after = adminClientFor(server, keys.reader.key);
      expect((await after.whoAmI({}, { timeoutMs: 5_000 })).principal, label).toBe(`key:${keys.reader.id}`);
      after.close();
    }
  });
});

describe('safe listener defaults', () => {
  const refusal = (overrides: Partial<Record<ConfigKey, string>>): FStoreError | undefined => {
    try {
      assertSafeListeners(loadConfig({}, overrides));
      return undefined;
    } catch (error) {
      return error as FStoreError;
    }
  };

  it('refuses to listen beyond loopback without authentication, naming the setting', () => {
    for (const host of ['0.0.0.0', '::', '10.1.2.3', 'fstore.example.com']) {
      const grpc = refusal({ grpcHost: host });
      expect(grpc, host).toBeInstanceOf(FStoreError);
      expect(grpc?.code).toBe('failed_precondition');
      expect(grpc?.message).toContain('FSTORE_GRPC_HOST');
      const metrics = refusal({ metricsHost: host });
      expect(metrics, host).toBeInstanceOf(FStoreError);
      expect(metrics?.code).toBe('failed_precondition');
      expect(metrics?.message).toContain('FSTORE_METRICS_HOST');
      // Metrics off: its host does not matter.
      expect(refusal({ metricsHost: host, metrics: 'off' }), host).toBeUndefined();
      // Authentication on, or the operator's explicit choice.
      expect(refusal({ grpcHost: host, metricsHost: host, auth: 'on' }), host).toBeUndefined();
      expect(refusal({ grpcHost: host, metricsHost: host, insecure: 'true' }), host).toBeUndefined();
    }
    for (const host of ['127.0.0.1', '127.0.0.53', '::1', '[::1]', 'localhost', 'LOCALHOST'])
      expect(refusal({ grpcHost: host, metricsHost: host }), host).toBeUndefined();
    expect(refusal({})).toBeUndefined();
    expect(loadConfig({}).grpcHost).toBe('127.0.0.1');
    expect(loadConfig({}).metricsHost).toBe('127.0.0.1');
  });

  const binary = join(import.meta.dirname, '../../bin/fstore.js');
  const runServe = (args: string[], environment: Record<string, string>) => {
    let output = '';
    const child: ChildProcess = spawn(process.execPath, [binary, 'serve', ...args], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...environment },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.on('data', (data) => {
      output += data;
    });
    child.stderr?.on('data', (data) => {
      output += data;
    });
    const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    return { child, exit, output: () => output };
  };
  const freePort = () =>
    new Promise<number>((resolve) => {
      const probe = createServer().listen(0, '127.0.0.1', () => {
        const address = probe.address();
        probe.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
      });
    });

  it('fstore serve --host 0.0.0.0 exits at once naming FSTORE_GRPC_HOST; with --insecure it serves, warning', async () => {
    const postgresUrl = requireEnvironment('FSTORE_TEST_POSTGRES_URL');
    const schema = randomName('cli');
    const environment = {
      FSTORE_POSTGRES_URL: postgresUrl,
      FSTORE_POSTGRES_SCHEMA: schema,
      FSTORE_METRICS_PORT: '0',
      FSTORE_SHUTDOWN_GRACE_MS: '1000',
    };
    try {
      const started = Date.now();
      const refused = runServe(['--host', '0.0.0.0', '--port', String(await freePort())], environment);
      const code = await Promise.race([
        refused.exit,
        new Promise<'still running'>((resolve) => setTimeout(() => resolve('still running'), 20_000)),
      ]);
      if (code === 'still running') refused.child.kill('SIGKILL');
      expect(code, refused.output()).not.toBe(0);
      expect(code, refused.output()).not.toBe('still running');
      expect(refused.output()).toContain('FSTORE_GRPC_HOST');
      expect(refused.output()).not.toMatch(/fstore serving/);
      expect(Date.now() - started).toBeLessThan(20_000);

      const port = await freePort();
      const insecure = runServe(['--host', '0.0.0.0', '--port', String(port), '--insecure'], environment);
      try {
        const deadline = Date.now() + 30_000;
        for (;;) {
          if (insecure.child.exitCode !== null) throw new Error(`fstore exited early:\n${insecure.output()}`);
          if ((await checkHealth(`127.0.0.1:${port}`).catch(() => 'DOWN')) === 'SERVING') break;
          if (Date.now() > deadline) throw new Error(`fstore not serving:\n${insecure.output()}`);
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
        const warning = insecure
          .output()
          .split('\n')
          .find((line) => line.includes('INSECURE'));
        expect(warning, insecure.output()).toBeDefined();
        expect(JSON.parse(warning as string).level).toBe(40); // pino's warn
        insecure.child.kill('SIGTERM');
        expect(await insecure.exit).toBe(0);
      } finally {
        insecure.child.kill('SIGKILL');
      }
    } finally {
      await dropSchema(postgresUrl, schema);
    }
  }, 60_000);
});

describe('health and reflection', () => {
  it('health answers SERVING without credentials when authentication is on', async () => {
    expect(await checkHealth(server.address)).toBe('SERVING');
    expect(await checkHealth(server.address, 'fstore.v1.FeatureService')).toBe('SERVING');
    expect(await checkHealth(server.address, 'fstore.v1.AdminService')).toBe('SERVING');
  });

  it('reflection is served by default and absent with reflection off', async () => {
    const listed = await reflect(server.address, { list_services: '' });
    const names = (listed.list_services_response as { service: { name: string }[] }).service.map(
      (service) => service.name,
    );
    expect(names).toEqual(expect.arrayContaining(services.map((service) => service.typeName)));

    const hidden = await startTestServer('memory', { auth: 'on', reflection: 'off' });
    try {
      const refused = await reflect(hidden.address, { list_services: '' }).then(
        () => undefined,
        (error: { code?: number }) => error,
      );
      expect(refused?.code).toBe(12); // UNIMPLEMENTED
      expect(await checkHealth(hidden.address)).toBe('SERVING');
    } finally {
      await hidden.stop();
    }
  });
});
