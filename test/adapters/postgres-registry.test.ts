import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { migrations } from '../../src/adapters/postgres/migrate.js';
import { resolvePostgresOptions } from '../../src/adapters/postgres/options.js';
import { createPostgresPool } from '../../src/adapters/postgres/pool.js';
import { createPostgresRegistry } from '../../src/adapters/postgres/postgres-registry.js';
import type { EntityDefinition, FeatureViewDefinition } from '../../src/domain/model.js';
import type { Registry } from '../../src/ports/registry.js';
import { failure } from '../support/rejection.js';

const connectionString = process.env.FSTORE_TEST_POSTGRES_URL;
if (!connectionString)
  throw new Error(
    'FSTORE_TEST_POSTGRES_URL is not set: start PostgreSQL with `bash scripts/servers.sh start-postgres` and export the variables printed by `bash scripts/servers.sh env`',
  );

// Every test file works in its own schema and drops it at the end (see afterAll).
const schema = `fstore_test_${randomBytes(6).toString('hex')}`;
const createdSchemas = new Set<string>([schema]);
const newSchema = () => {
  const name = `fstore_test_${randomBytes(6).toString('hex')}`;
  createdSchemas.add(name);
  return name;
};

const open: Registry[] = [];
async function openRegistry(schemaName = schema): Promise<Registry> {
  const registry = await createPostgresRegistry({
    connectionString: connectionString as string,
    schema: schemaName,
  });
  open.push(registry);
  return registry;
}

let registry: Registry;
let projectCounter = 0;
/** Tests share the schema but not projects, so they cannot see each other's objects. */
const newProject = () => `p${Date.now().toString(36)}_${projectCounter++}`;

const userEntity: EntityDefinition = {
  name: 'user',
  joinKeys: [{ name: 'user_id', type: 'int64' }],
  description: 'a customer',
};
const storeEntity: EntityDefinition = {
  name: 'store',
  joinKeys: [
    { name: 'country', type: 'string' },
    { name: 'store_id', type: 'int64' },
  ],
  description: 'a shop, by country and number',
};

const view = (overrides: Partial<FeatureViewDefinition> = {}): FeatureViewDefinition => ({
  name: 'user_stats',
  entities: ['user'],
  features: [
    { name: 'clicks', type: 'int64', description: 'clicks in the last day', tags: {} },
    { name: 'ctr', type: 'double', description: '', tags: { unit: 'ratio' } },
  ],
  ttlMs: 86_400_000,
  online: true,
  source: 'batch',
  owner: 'ml@example.com',
  description: 'per-user statistics',
  tags: { team: 'ranking' },
  ...overrides,
});

beforeAll(async () => {
  registry = await openRegistry();
});

afterAll(async () => {
  await Promise.all(open.map((each) => each.close()));
  const client = new pg.Client({ connectionString });
  await client.connect();
  for (const name of createdSchemas) await client.query(`DROP SCHEMA IF EXISTS "${name}" CASCADE`);
  await client.end();
});

describe('entities', () => {
  it('applies, reads, lists, updates and deletes', async () => {
    const project = newProject();
    const created = await registry.applyEntity(project, userEntity, { force: false });
    expect(created.outcome).toBe('created');
    expect(created.entity).toMatchObject(userEntity);
    expect(created.entity.updatedAt).toBeInstanceOf(Date);

    const again = await registry.applyEntity(project, userEntity, { force: false });
    expect(again.outcome).toBe('unchanged');
    expect(again.entity.updatedAt).toEqual(created.entity.updatedAt);

    const described = await registry.applyEntity(
      project,
      { ...userEntity, description: 'a buyer' },
      { force: false },
    );
    expect(described.outcome).toBe('updated');
    expect(await registry.getEntity(project, 'user')).toMatchObject({ description: 'a buyer' });

    await registry.applyEntity(project, storeEntity, { force: false });
    expect((await registry.listEntities(project)).map((entity) => entity.name)).toEqual(['store', 'user']);
    expect(await registry.getEntity(project, 'store')).toMatchObject({ joinKeys: storeEntity.joinKeys });

    await registry.deleteEntity(project, 'user');
    const missing = await failure(registry.getEntity(project, 'user'));
    expect(missing.code).toBe('not_found');
    expect(missing.message).toBe(`project "${project}" has no entity "user"`);
    expect((await failure(registry.deleteEntity(project, 'user'))).code).toBe('not_found');
  });

  it('refuses an invalid definition with the field path', async () => {
    const project = newProject();
    const error = await failure(
      registry.applyEntity(
        project,
        { ...userEntity, joinKeys: [{ name: '1bad', type: 'int64' }] },
        { force: false },
      ),
    );
    expect(error.code).toBe('invalid_argument');
    expect(error.message).toContain('entity.join_keys[0].name');
    const noKeys = await failure(
      registry.applyEntity(project, { ...userEntity, joinKeys: [] }, { force: false }),
    );
    expect(noKeys.message).toContain('entity.join_keys');
    const badProject = await failure(registry.applyEntity('no such project!', userEntity, { force: false }));
    expect(badProject.code).toBe('invalid_argument');
    expect(badProject.message).toContain('project');
  });

  it('refuses a join-key change while views use the entity, unless forced', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    await registry.applyFeatureView(project, view(), { force: false });
    const rekeyed: EntityDefinition = { ...userEntity, joinKeys: [{ name: 'user_id', type: 'string' }] };
    const refused = await failure(registry.applyEntity(project, rekeyed, { force: false }));
    expect(refused.code).toBe('failed_precondition');
    expect(refused.message).toContain('"user_stats"');
    expect(refused.message).toContain('user_id int64');

    const forced = await registry.applyEntity(project, rekeyed, { force: true });
    expect(forced.outcome).toBe('updated');
    // The view keeps the join keys it was applied with...
    expect((await registry.getFeatureView(project, 'user_stats')).joinKeys).toEqual([
      { name: 'user_id', type: 'int64' },
    ]);
    // ...and applying it again is a join-key change, hence incompatible.
    const reapplied = await failure(registry.applyFeatureView(project, view(), { force: false }));
    expect(reapplied.code).toBe('failed_precondition');
    expect(reapplied.message).toContain('join keys change');
  });

  it('refuses to delete an entity a view uses, naming the view', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    await registry.applyFeatureView(project, view(), { force: false });
    const error = await failure(registry.deleteEntity(project, 'user'));
    expect(error.code).toBe('failed_precondition');
    expect(error.message).toContain('feature view "user_stats"');
    await registry.deleteFeatureView(project, 'user_stats');
    await registry.deleteEntity(project, 'user');
  });
});

describe('feature views', () => {
  it('versions compatible changes and keeps the history readable', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    const first = await registry.applyFeatureView(project, view(), { force: false });
    expect(first.outcome).toBe('created');
    expect(first.featureView).toMatchObject({
      ...view(),
      project,
      version: 1,
      joinKeys: userEntity.joinKeys,
    });

    const unchanged = await registry.applyFeatureView(project, view(), { force: false });
    expect(unchanged.outcome).toBe('unchanged');
    expect(unchanged.featureView.version).toBe(1);

    const added = view({
      features: [...view().features, { name: 'purchases', type: 'int64', description: '', tags: {} }],
      ttlMs: 3_600_000,
    });
    const second = await registry.applyFeatureView(project, added, { force: false });
    expect(second.outcome).toBe('updated');
    expect(second.featureView.version).toBe(2);
    expect(second.featureView.id).toBe(first.featureView.id);

    expect(await registry.getFeatureView(project, 'user_stats')).toMatchObject({ ...added, version: 2 });
    expect(await registry.getFeatureView(project, 'user_stats', 0)).toMatchObject({ version: 2 });
    expect(await registry.getFeatureView(project, 'user_stats', 1)).toMatchObject({ ...view(), version: 1 });

    const history = await registry.listFeatureViewVersions(project, 'user_stats');
    expect(history.map((each) => each.version)).toEqual([1, 2]);
    expect(history[0]).toMatchObject(view());
    expect(history[1]).toMatchObject(added);
    expect(history.every((each) => each.id === first.featureView.id)).toBe(true);

    expect((await registry.applyFeatureView(project, added, { force: false })).outcome).toBe('unchanged');
    expect(await registry.listFeatureViewVersions(project, 'user_stats')).toHaveLength(2);

    const listed = await registry.listFeatureViews(project);
    expect(listed.map((each) => [each.name, each.version])).toEqual([['user_stats', 2]]);

    const noVersion = await failure(registry.getFeatureView(project, 'user_stats', 3));
    expect(noVersion.code).toBe('not_found');
    expect(noVersion.message).toContain('no version 3');
  });

  it('treats tag order as no change', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    await registry.applyFeatureView(project, view({ tags: { a: '1', b: '2' } }), { force: false });
    const reordered = await registry.applyFeatureView(project, view({ tags: { b: '2', a: '1' } }), {
      force: false,
    });
    expect(reordered.outcome).toBe('unchanged');
  });

  it('refuses incompatible changes with the reason, and records them with force', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    await registry.applyFeatureView(project, view(), { force: false });

    const removed = view({ features: [view().features[0]!] });
    const refused = await failure(registry.applyFeatureView(project, removed, { force: false }));
    expect(refused.code).toBe('failed_precondition');
    expect(refused.message).toBe(
      'feature_view "user_stats" change is incompatible: feature "ctr" is removed; apply with force to record it as a new version',
    );
    const retyped = view({
      features: [{ name: 'clicks', type: 'double', description: '', tags: {} }, view().features[1]!],
    });
    const retypedError = await failure(registry.applyFeatureView(project, retyped, { force: false }));
    expect(retypedError.message).toContain('feature "clicks" changes type from int64 to double');
    expect(await registry.listFeatureViewVersions(project, 'user_stats')).toHaveLength(1);

    const forced = await registry.applyFeatureView(project, removed, { force: true });
    expect(forced.outcome).toBe('updated');
    expect(forced.featureView.version).toBe(2);
    expect(forced.featureView.features.map((feature) => feature.name)).toEqual(['clicks']);
  });

  it('resolves composite join keys in entity order', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    await registry.applyEntity(project, storeEntity, { force: false });
    const applied = await registry.applyFeatureView(
      project,
      view({ name: 'user_store', entities: ['store', 'user'] }),
      { force: false },
    );
    expect(applied.featureView.joinKeys).toEqual([
      { name: 'country', type: 'string' },
      { name: 'store_id', type: 'int64' },
      { name: 'user_id', type: 'int64' },
    ]);
    expect((await registry.getFeatureView(project, 'user_store')).entities).toEqual(['store', 'user']);

    const reordered = await failure(
      registry.applyFeatureView(project, view({ name: 'user_store', entities: ['user', 'store'] }), {
        force: false,
      }),
    );
    expect(reordered.code).toBe('failed_precondition');
    expect(reordered.message).toContain('join keys change');
  });

  it('refuses two entities sharing a join-key name', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    await registry.applyEntity(
      project,
      { name: 'account', joinKeys: [{ name: 'user_id', type: 'string' }], description: '' },
      { force: false },
    );
    const error = await failure(
      registry.applyFeatureView(project, view({ entities: ['user', 'account'] }), { force: false }),
    );
    expect(error.code).toBe('invalid_argument');
    expect(error.message).toContain('feature_view.entities[1]');
    expect(error.message).toContain('"user_id"');
  });

  it('refuses an unknown entity with its field path, and invalid definitions', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    const unknown = await failure(
      registry.applyFeatureView(project, view({ entities: ['user', 'merchant'] }), { force: false }),
    );
    expect(unknown.code).toBe('not_found');
    expect(unknown.message).toContain('feature_view.entities[1]');
    expect(unknown.message).toContain('"merchant"');

    const badName = await failure(
      registry.applyFeatureView(project, view({ name: 'bad-name' }), { force: false }),
    );
    expect(badName.code).toBe('invalid_argument');
    expect(badName.message).toContain('feature_view.name');
    const duplicate = await failure(
      registry.applyFeatureView(project, view({ features: [view().features[0]!, view().features[0]!] }), {
        force: false,
      }),
    );
    expect(duplicate.message).toContain('feature_view.features[1]');
    const badTtl = await failure(registry.applyFeatureView(project, view({ ttlMs: -1 }), { force: false }));
    expect(badTtl.message).toContain('feature_view.ttl');
    expect(await registry.listFeatureViews(project)).toEqual([]);
  });

  it('deletes a view with its versions and never reuses its id', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    const first = await registry.applyFeatureView(project, view(), { force: false });
    await registry.applyFeatureView(project, view({ description: 'v2' }), { force: false });
    await registry.deleteFeatureView(project, 'user_stats');
    expect((await failure(registry.getFeatureView(project, 'user_stats'))).code).toBe('not_found');
    expect((await failure(registry.listFeatureViewVersions(project, 'user_stats'))).code).toBe('not_found');
    expect((await failure(registry.deleteFeatureView(project, 'user_stats'))).code).toBe('not_found');

    const again = await registry.applyFeatureView(project, view(), { force: false });
    expect(again.outcome).toBe('created');
    expect(again.featureView.version).toBe(1);
    expect(again.featureView.id).toBeGreaterThan(first.featureView.id);
  });

  it('answers not_found for an unknown project and an empty list', async () => {
    const error = await failure(registry.getFeatureView('nowhere', 'v'));
    expect(error.code).toBe('not_found');
    expect(error.message).toBe('project "nowhere" has no feature view "v"');
    expect(await registry.listFeatureViews('nowhere')).toEqual([]);
    expect(await registry.listEntities('nowhere')).toEqual([]);
    expect(await registry.listFeatureSets('nowhere')).toEqual([]);
    expect((await failure(registry.getFeatureSet('nowhere', 's'))).code).toBe('not_found');
    expect((await failure(registry.getEntity('nowhere', 'e'))).code).toBe('not_found');
  });
});

describe('feature sets', () => {
  it('applies, checks every reference, lists and deletes', async () => {
    const project = newProject();
    await registry.applyEntity(project, userEntity, { force: false });
    await registry.applyFeatureView(project, view(), { force: false });
    const definition = {
      name: 'ranker',
      features: ['user_stats:clicks', 'user_stats:ctr'],
      description: 'v1 model',
    };
    const created = await registry.applyFeatureSet(project, definition);
    expect(created.outcome).toBe('created');
    expect(created.featureSet).toMatchObject(definition);
    expect((await registry.applyFeatureSet(project, definition)).outcome).toBe('unchanged');
    const updated = await registry.applyFeatureSet(project, { ...definition, features: ['user_stats:ctr'] });
    expect(updated.outcome).toBe('updated');
    expect(await registry.getFeatureSet(project, 'ranker')).toMatchObject({ features: ['user_stats:ctr'] });
    expect((await registry.listFeatureSets(project)).map((set) => set.name)).toEqual(['ranker']);

    const unknownView = await failure(
      registry.applyFeatureSet(project, { ...definition, features: ['user_stats:ctr', 'other:x'] }),
    );
    expect(unknownView.code).toBe('not_found');
    expect(unknownView.message).toContain('feature_set.features[1]');
    expect(unknownView.message).toContain('"other"');
    const unknownFeature = await failure(
      registry.applyFeatureSet(project, { ...definition, features: ['user_stats:ctr', 'user_stats:nope'] }),
    );
    expect(unknownFeature.code).toBe('not_found');
    expect(unknownFeature.message).toContain('feature_set.features[1]');
    expect(unknownFeature.message).toContain('"nope"');
    const malformed = await failure(
      registry.applyFeatureSet(project, { ...definition, features: ['clicks'] }),
    );
    expect(malformed.code).toBe('invalid_argument');
    expect(malformed.message).toContain('feature_set.features[0]');

    const inUse = await failure(registry.deleteFeatureView(project, 'user_stats'));
    expect(inUse.code).toBe('failed_precondition');
    expect(inUse.message).toContain('feature set "ranker"');

    await registry.deleteFeatureSet(project, 'ranker');
    expect((await failure(registry.getFeatureSet(project, 'ranker'))).code).toBe('not_found');
    expect((await failure(registry.deleteFeatureSet(project, 'ranker'))).code).toBe('not_found');
    await registry.deleteFeatureView(project, 'user_stats');
  });
});

describe('projects and snapshots', () => {
  it('lists the projects holding objects, sorted', async () => {
    const schemaName = newSchema();
    const isolated = await openRegistry(schemaName);
    expect(await isolated.listProjects()).toEqual([]);
    await isolated.applyEntity('zeta', userEntity, { force: false });
    await isolated.applyEntity('Alpha', userEntity, { force: false });
    await isolated.applyEntity('beta', userEntity, { force: false });
    expect(await isolated.listProjects()).toEqual(['Alpha', 'beta', 'zeta']);
    await isolated.deleteEntity('beta', 'user');
    expect(await isolated.listProjects()).toEqual(['Alpha', 'zeta']);
  });

  it('loads every version and set in one snapshot with a growing revision', async () => {
    const schemaName = newSchema();
    const isolated = await openRegistry(schemaName);
    const empty = await isolated.loadSnapshot();
    expect(empty).toEqual({ featureViewVersions: [], featureSets: [], revision: 0 });

    await isolated.applyEntity('a', userEntity, { force: false });
    await isolated.applyFeatureView('a', view(), { force: false });
    await isolated.applyFeatureView('a', view({ description: 'second' }), { force: false });
    await isolated.applyEntity('b', userEntity, { force: false });
    await isolated.applyFeatureView('b', view({ name: 'other' }), { force: false });
    await isolated.applyFeatureSet('b', { name: 'model', features: ['other:clicks'], description: '' });
    const snapshot = await isolated.loadSnapshot();
    expect(snapshot.revision).toBe(6);
    expect(snapshot.featureViewVersions.map((each) => [each.project, each.name, each.version])).toEqual([
      ['a', 'user_stats', 1],
      ['a', 'user_stats', 2],
      ['b', 'other', 1],
    ]);
    expect(snapshot.featureSets).toEqual([expect.objectContaining({ project: 'b', name: 'model' })]);

    await isolated.applyFeatureView('a', view({ description: 'second' }), { force: false });
    expect((await isolated.loadSnapshot()).revision).toBe(6); // unchanged writes nothing
    await isolated.deleteFeatureSet('b', 'model');
    expect((await isolated.loadSnapshot()).revision).toBe(7);
  });
});

describe('concurrency and migrations', () => {
  it('serializes concurrent applies of one view from two processes', async () => {
    const project = newProject();
    const other = await openRegistry();
    await registry.applyEntity(project, userEntity, { force: false });
    const applies = Array.from({ length: 16 }, (_, index) =>
      (index % 2 === 0 ? registry : other).applyFeatureView(project, view({ description: `d${index}` }), {
        force: false,
      }),
    );
    const results = await Promise.all(applies);
    expect(results.filter((result) => result.outcome === 'created')).toHaveLength(1);
    expect(results.filter((result) => result.outcome === 'updated')).toHaveLength(15);
    const versions = results.map((result) => result.featureView.version).sort((a, b) => a - b);
    expect(versions).toEqual(Array.from({ length: 16 }, (_, index) => index + 1));
    const history = await other.listFeatureViewVersions(project, 'user_stats');
    expect(history.map((each) => each.version)).toEqual(versions);
    expect(new Set(history.map((each) => each.id)).size).toBe(1);
    expect((await registry.getFeatureView(project, 'user_stats')).version).toBe(16);
  });

  it('creates one view once when two processes race to create it', async () => {
    const project = newProject();
    const other = await openRegistry();
    await registry.applyEntity(project, userEntity, { force: false });
    const results = await Promise.all([
      registry.applyFeatureView(project, view(), { force: false }),
      other.applyFeatureView(project, view(), { force: false }),
    ]);
    expect(results.map((result) => result.outcome).sort()).toEqual(['created', 'unchanged']);
    expect(await registry.listFeatureViewVersions(project, 'user_stats')).toHaveLength(1);
  });

  it('runs migrations idempotently', async () => {
    const schemaName = newSchema();
    const first = await openRegistry(schemaName);
    await first.applyEntity('p', userEntity, { force: false });
    await first.close();
    const second = await openRegistry(schemaName);
    expect(await second.getEntity('p', 'user')).toMatchObject(userEntity);
    const client = new pg.Client({ connectionString });
    await client.connect();
    try {
      const applied = await client.query(
        `SELECT version FROM "${schemaName}".schema_migrations ORDER BY version`,
      );
      expect(applied.rows.map((row) => row.version)).toEqual(
        migrations.map((migration) => migration.version),
      );
    } finally {
      await client.end();
    }
  });

  it('lets several processes migrate a new schema at once', async () => {
    const schemaName = newSchema();
    const registries = await Promise.all([
      openRegistry(schemaName),
      openRegistry(schemaName),
      openRegistry(schemaName),
    ]);
    await registries[0]!.applyEntity('p', userEntity, { force: false });
    expect(await registries[2]!.listEntities('p')).toHaveLength(1);
  });
});

describe('watch', () => {
  it('hears a change made through another registry, and not one in another schema', async () => {
    const schemaName = newSchema();
    const watcher = await openRegistry(schemaName);
    const writer = await openRegistry(schemaName);
    const elsewhere = await openRegistry(newSchema());
    const events: { reconnected: boolean }[] = [];
    let heard: (() => void) | undefined;
    const stop = await watcher.watch((event) => {
      events.push(event);
      heard?.();
    });

    await elsewhere.applyEntity('p', userEntity, { force: false });
    const started = Date.now();
    const notified = new Promise<void>((resolve) => {
      heard = resolve;
    });
    await writer.applyEntity('p', userEntity, { force: false });
    await notified;
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(events).toEqual([{ reconnected: false }]);

    await stop();
    await writer.applyEntity('p', { ...userEntity, description: 'after stop' }, { force: false });
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(events).toHaveLength(1);
  });
});

describe('pool and options', () => {
  it('translates a statement timeout into deadline_exceeded', async () => {
    const pool = createPostgresPool(
      resolvePostgresOptions({
        connectionString: connectionString as string,
        schema,
        statementTimeoutMs: 100,
      }),
    );
    try {
      const error = await failure(pool.query('SELECT pg_sleep(2)'));
      expect(error.code).toBe('deadline_exceeded');
      expect((await pool.query<{ one: number }>('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await pool.end();
    }
    expect((await failure(pool.query('SELECT 1'))).code).toBe('unavailable');
  });

  it('names the bad option', () => {
    expect(() => resolvePostgresOptions({ connectionString: 'postgres://x', schema: 'Bad Schema' })).toThrow(
      /postgres option schema/,
    );
    expect(() => resolvePostgresOptions({ connectionString: 'postgres://x', poolSize: 0 })).toThrow(
      /postgres option poolSize/,
    );
    expect(resolvePostgresOptions({ connectionString: 'postgres://x' })).toMatchObject({ schema: 'fstore' });
  });

  it('fails with unavailable when the database cannot be reached', async () => {
    const started = Date.now();
    const error = await failure(
      createPostgresRegistry({ connectionString: 'postgres://postgres@127.0.0.1:1/fstore_test', schema }),
    );
    expect(error.code).toBe('unavailable');
    expect(error.message).toMatch(/^registry database \(PostgreSQL\) is unavailable: /);
    expect(Date.now() - started).toBeLessThan(2_000);
  });
});
