import type { PoolClient } from 'pg';
import { FStoreError, notFound } from '../../domain/errors.js';
import type {
  ApplyOutcome,
  Entity,
  EntityDefinition,
  FeatureSet,
  FeatureSetDefinition,
  FeatureView,
  FeatureViewDefinition,
  JoinKey,
} from '../../domain/model.js';
import {
  findIncompatibleChanges,
  isSameEntity,
  isSameEntityKeys,
  isSameFeatureView,
  parseFeatureReference,
  resolveViewJoinKeys,
  validateEntityDefinition,
  validateFeatureSetDefinition,
  validateFeatureViewDefinition,
  validateName,
} from '../../domain/registry-rules.js';
import {
  canonicalStreamAggregation,
  isSameStreamAggregation,
  producedFeatureView,
  type StreamAggregation,
  type StreamAggregationDefinition,
  validateKeyFields,
  validateStreamAggregationDefinition,
} from '../../domain/stream-aggregation.js';
import type { Registry, RegistrySnapshotData } from '../../ports/registry.js';
import { createMigratedPool } from './migrate.js';
import { type PostgresOptionsInput, resolvePostgresOptions } from './options.js';
import { registryChannel, registryNotificationPayload, watchRegistryChanges } from './registry-watch.js';

/**
 * The registry in PostgreSQL (tables in migrations/001_registry.sql, stream aggregation
 * definitions in 002_stream_aggregations.sql). Every change runs in one
 * transaction that first takes an advisory lock on the object's (project, kind, name), so
 * concurrent applies of one object serialize, including the first one, which has no row to lock
 * yet. Objects an apply depends on (a view's entities, a set's views) are read FOR SHARE, and a
 * delete locks its row FOR UPDATE before checking who uses it, so a dependency cannot disappear
 * under a concurrent apply. Every change bumps the revision and notifies watchers before commit.
 */
export async function createPostgresRegistry(input: PostgresOptionsInput): Promise<Registry> {
  const options = resolvePostgresOptions(input);
  const pool = await createMigratedPool(options);
  const stopWatches = new Set<() => Promise<void>>();
  let closed = false;

  const inProject = (project: string) => validateName('project', project);

  /** Serializes writers of one object; the key includes the schema so installations don't contend. */
  const lockObject = (client: PoolClient, kind: ObjectKind, project: string, name: string) =>
    client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [
      `fstore.${options.schema}.${kind}.${project}.${name}`,
    ]);

  /** Bumps the revision and announces it; both take effect at commit. */
  const recordChange = async (client: PoolClient) => {
    const result = await client.query<{ revision: string }>(
      'UPDATE registry_revision SET revision = revision + 1 RETURNING revision',
    );
    const revision = Number(result.rows[0]?.revision);
    await client.query('SELECT pg_notify($1, $2)', [
      registryChannel,
      registryNotificationPayload(options.schema, revision),
    ]);
  };

  /**
   * The body of applyFeatureView, shared with applyStreamAggregation: runs in the caller's
   * transaction, which holds the view's lock.
   */
  const applyViewIn = async (
    client: PoolClient,
    project: string,
    view: FeatureViewDefinition,
    force: boolean,
    field = 'feature_view',
  ): Promise<{ featureView: FeatureView; outcome: ApplyOutcome }> => {
    // FOR SHARE: an entity cannot be deleted or re-keyed until this apply commits.
    const entityRows = await client.query<EntityRow>(
      `SELECT name, join_keys, description, updated_at FROM entities
       WHERE project = $1 AND name = ANY($2::text[]) ORDER BY name COLLATE "C" FOR SHARE`,
      [project, view.entities],
    );
    const entitiesByName = new Map(entityRows.rows.map((row) => [row.name, toEntity(row)]));
    const joinKeys = resolveViewJoinKeys(view, entitiesByName, field);

    const currentRows = await client.query<VersionRow>(
      `${selectVersion} WHERE v.project = $1 AND v.name = $2 AND fv.version = v.current_version FOR UPDATE OF v`,
      [project, view.name],
    );
    const currentRow = currentRows.rows[0];
    if (!currentRow) {
      const created = await client.query<{ id: number }>(
        'INSERT INTO feature_views (project, name, current_version) VALUES ($1, $2, 1) RETURNING id',
        [project, view.name],
      );
      const featureView = await insertVersion(client, firstRow(created.rows).id, 1, view, joinKeys);
      await recordChange(client);
      return { featureView: { ...featureView, project }, outcome: 'created' };
    }
    const current = toFeatureView(currentRow);
    if (isSameFeatureView(current, view, joinKeys)) return { featureView: current, outcome: 'unchanged' };
    const reasons = findIncompatibleChanges(current, view, joinKeys);
    if (reasons.length > 0 && !force)
      throw new FStoreError(
        'failed_precondition',
        `feature_view "${view.name}" change is incompatible: ${reasons.join('; ')}; apply with force to record it as a new version`,
      );
    const version = current.version + 1;
    const featureView = await insertVersion(client, current.id, version, view, joinKeys);
    await client.query('UPDATE feature_views SET current_version = $2 WHERE id = $1', [current.id, version]);
    await recordChange(client);
    return { featureView: { ...featureView, project }, outcome: 'updated' };
  };

  /** The body of deleteFeatureView, shared with deleteStreamAggregation. */
  const deleteViewIn = async (client: PoolClient, project: string, name: string) => {
    const current = await client.query(
      'SELECT 1 FROM feature_views WHERE project = $1 AND name = $2 FOR UPDATE',
      [project, name],
    );
    if (current.rowCount === 0) throw notFound(`project "${project}" has no feature view "${name}"`);
    const users = await client.query<{ name: string }>(
      `SELECT s.name FROM feature_sets s
       WHERE s.project = $1
         AND EXISTS (SELECT 1 FROM jsonb_array_elements_text(s.features) AS reference
                     WHERE split_part(reference, ':', 1) = $2)
       ORDER BY s.name COLLATE "C"`,
      [project, name],
    );
    const sets = users.rows.map((row) => row.name);
    if (sets.length > 0)
      throw new FStoreError(
        'failed_precondition',
        `feature view "${name}" is used by feature set${sets.length > 1 ? 's' : ''} ${quoteList(
          sets,
        )}; delete those sets or remove the view from them first`,
      );
    // Its versions go with it (ON DELETE CASCADE); its id is never handed out again.
    await client.query('DELETE FROM feature_views WHERE project = $1 AND name = $2', [project, name]);
  };

  /** A produced view changes only with its stream aggregation. */
  const refuseIfProduced = async (client: PoolClient, project: string, name: string, action: string) => {
    const producer = await client.query(
      'SELECT 1 FROM stream_aggregations WHERE project = $1 AND name = $2 FOR SHARE',
      [project, name],
    );
    if ((producer.rowCount ?? 0) > 0)
      throw new FStoreError(
        'failed_precondition',
        `feature view "${name}" is produced by stream aggregation "${name}"; ${action} the stream aggregation instead`,
      );
  };

  const registry: Registry = {
    async applyEntity(project, definition, { force }) {
      inProject(project);
      validateEntityDefinition(definition);
      const entity = entityDefinition(definition);
      return pool.transaction<{ entity: Entity; outcome: ApplyOutcome }>(async (client) => {
        await lockObject(client, 'entity', project, entity.name);
        const current = await client.query<EntityRow>(
          'SELECT name, join_keys, description, updated_at FROM entities WHERE project = $1 AND name = $2 FOR UPDATE',
          [project, entity.name],
        );
        const currentRow = current.rows[0];
        if (!currentRow) {
          const inserted = await client.query<EntityRow>(
            `INSERT INTO entities (project, name, join_keys, description, updated_at)
             VALUES ($1, $2, $3, $4, now()) RETURNING name, join_keys, description, updated_at`,
            [project, entity.name, JSON.stringify(entity.joinKeys), entity.description],
          );
          await recordChange(client);
          return { entity: toEntity(firstRow(inserted.rows)), outcome: 'created' };
        }
        const existing = toEntity(currentRow);
        if (isSameEntity(existing, entity)) return { entity: existing, outcome: 'unchanged' };
        if (!isSameEntityKeys(existing, entity) && !force) {
          const users = await viewsUsingEntity(client, project, entity.name);
          if (users.length > 0)
            throw new FStoreError(
              'failed_precondition',
              `entity "${entity.name}" join keys change from (${describeKeys(existing.joinKeys)}) to (${describeKeys(
                entity.joinKeys,
              )}) but feature view${users.length > 1 ? 's' : ''} ${quoteList(users)} use${
                users.length > 1 ? '' : 's'
              } it; apply with force to change them (each view keeps its current join keys until it is applied again)`,
            );
        }
        const updated = await client.query<EntityRow>(
          `UPDATE entities SET join_keys = $3, description = $4, updated_at = now()
           WHERE project = $1 AND name = $2 RETURNING name, join_keys, description, updated_at`,
          [project, entity.name, JSON.stringify(entity.joinKeys), entity.description],
        );
        await recordChange(client);
        return { entity: toEntity(firstRow(updated.rows)), outcome: 'updated' };
      });
    },

    async getEntity(project, name) {
      const result = await pool.query<EntityRow>(
        'SELECT name, join_keys, description, updated_at FROM entities WHERE project = $1 AND name = $2',
        [project, name],
      );
      const row = result.rows[0];
      if (!row) throw notFound(`project "${project}" has no entity "${name}"`);
      return toEntity(row);
    },

    async listEntities(project) {
      const result = await pool.query<EntityRow>(
        'SELECT name, join_keys, description, updated_at FROM entities WHERE project = $1 ORDER BY name COLLATE "C"',
        [project],
      );
      return result.rows.map(toEntity);
    },

    async deleteEntity(project, name) {
      await pool.transaction(async (client) => {
        await lockObject(client, 'entity', project, name);
        const current = await client.query(
          'SELECT 1 FROM entities WHERE project = $1 AND name = $2 FOR UPDATE',
          [project, name],
        );
        if (current.rowCount === 0) throw notFound(`project "${project}" has no entity "${name}"`);
        const users = await viewsUsingEntity(client, project, name);
        if (users.length > 0)
          throw new FStoreError(
            'failed_precondition',
            `entity "${name}" is used by feature view${users.length > 1 ? 's' : ''} ${quoteList(
              users,
            )}; delete those views or change their entities first`,
          );
        await client.query('DELETE FROM entities WHERE project = $1 AND name = $2', [project, name]);
        await recordChange(client);
      });
    },

    async applyFeatureView(project, definition, { force }) {
      inProject(project);
      validateFeatureViewDefinition(definition);
      const view = featureViewDefinition(definition);
      return pool.transaction<{ featureView: FeatureView; outcome: ApplyOutcome }>(async (client) => {
        await lockObject(client, 'feature_view', project, view.name);
        await refuseIfProduced(client, project, view.name, 'apply');
        return applyViewIn(client, project, view, force);
      });
    },

    async getFeatureView(project, name, version) {
      const wanted = version ?? 0;
      if (!Number.isInteger(wanted) || wanted < 0)
        throw new FStoreError(
          'invalid_argument',
          `version: must be a positive whole number or 0, got ${wanted}`,
        );
      const result = await pool.query<VersionRow>(
        `${selectVersion} WHERE v.project = $1 AND v.name = $2
         AND fv.version = CASE WHEN $3::int = 0 THEN v.current_version ELSE $3::int END`,
        [project, name, wanted],
      );
      const row = result.rows[0];
      if (row) return toFeatureView(row);
      if (wanted === 0) throw notFound(`project "${project}" has no feature view "${name}"`);
      const exists = await pool.query<{ current_version: number }>(
        'SELECT current_version FROM feature_views WHERE project = $1 AND name = $2',
        [project, name],
      );
      const latest = exists.rows[0];
      if (!latest) throw notFound(`project "${project}" has no feature view "${name}"`);
      throw notFound(
        `feature view "${name}" of project "${project}" has no version ${wanted} (versions 1 to ${latest.current_version})`,
      );
    },

    async listFeatureViews(project) {
      const result = await pool.query<VersionRow>(
        `${selectVersion} WHERE v.project = $1 AND fv.version = v.current_version ORDER BY v.name COLLATE "C"`,
        [project],
      );
      return result.rows.map(toFeatureView);
    },

    async listFeatureViewVersions(project, name) {
      const result = await pool.query<VersionRow>(
        `${selectVersion} WHERE v.project = $1 AND v.name = $2 ORDER BY fv.version`,
        [project, name],
      );
      if (result.rows.length === 0) throw notFound(`project "${project}" has no feature view "${name}"`);
      return result.rows.map(toFeatureView);
    },

    async deleteFeatureView(project, name) {
      await pool.transaction(async (client) => {
        await lockObject(client, 'feature_view', project, name);
        await refuseIfProduced(client, project, name, 'delete');
        await deleteViewIn(client, project, name);
        await recordChange(client);
      });
    },

    async applyFeatureSet(project, definition) {
      inProject(project);
      validateFeatureSetDefinition(definition);
      const featureSet = featureSetDefinition(definition);
      const references = featureSet.features.map((reference, index) =>
        parseFeatureReference(`feature_set.features[${index}]`, reference),
      );
      return pool.transaction<{ featureSet: FeatureSet; outcome: ApplyOutcome }>(async (client) => {
        await lockObject(client, 'feature_set', project, featureSet.name);
        // FOR SHARE: a referenced view cannot be deleted or changed until this apply commits.
        const viewRows = await client.query<{ name: string; features: { name: string }[] }>(
          `SELECT v.name, fv.definition -> 'features' AS features
           FROM feature_views v JOIN feature_view_versions fv ON fv.view_id = v.id AND fv.version = v.current_version
           WHERE v.project = $1 AND v.name = ANY($2::text[])
           ORDER BY v.name COLLATE "C" FOR SHARE OF v`,
          [project, [...new Set(references.map((reference) => reference.view))]],
        );
        const featuresByView = new Map(
          viewRows.rows.map((row) => [row.name, new Set(row.features.map((feature) => feature.name))]),
        );
        references.forEach((reference, index) => {
          const features = featuresByView.get(reference.view);
          if (!features)
            throw notFound(
              `feature_set.features[${index}]: project "${project}" has no feature view "${reference.view}"`,
            );
          if (!features.has(reference.feature))
            throw notFound(
              `feature_set.features[${index}]: feature view "${reference.view}" has no feature "${reference.feature}"`,
            );
        });

        const current = await client.query<FeatureSetRow>(
          'SELECT name, features, description, updated_at FROM feature_sets WHERE project = $1 AND name = $2 FOR UPDATE',
          [project, featureSet.name],
        );
        const currentRow = current.rows[0];
        if (currentRow) {
          const existing = toFeatureSet(currentRow);
          if (
            existing.description === featureSet.description &&
            existing.features.length === featureSet.features.length &&
            existing.features.every((reference, index) => reference === featureSet.features[index])
          )
            return { featureSet: existing, outcome: 'unchanged' };
        }
        const written = await client.query<FeatureSetRow>(
          `INSERT INTO feature_sets (project, name, features, description, updated_at)
           VALUES ($1, $2, $3, $4, now())
           ON CONFLICT (project, name) DO UPDATE
             SET features = excluded.features, description = excluded.description, updated_at = excluded.updated_at
           RETURNING name, features, description, updated_at`,
          [project, featureSet.name, JSON.stringify(featureSet.features), featureSet.description],
        );
        await recordChange(client);
        return {
          featureSet: toFeatureSet(firstRow(written.rows)),
          outcome: currentRow ? 'updated' : 'created',
        };
      });
    },

    async getFeatureSet(project, name) {
      const result = await pool.query<FeatureSetRow>(
        'SELECT name, features, description, updated_at FROM feature_sets WHERE project = $1 AND name = $2',
        [project, name],
      );
      const row = result.rows[0];
      if (!row) throw notFound(`project "${project}" has no feature set "${name}"`);
      return toFeatureSet(row);
    },

    async listFeatureSets(project) {
      const result = await pool.query<FeatureSetRow>(
        `SELECT name, features, description, updated_at FROM feature_sets
         WHERE project = $1 ORDER BY name COLLATE "C"`,
        [project],
      );
      return result.rows.map(toFeatureSet);
    },

    async deleteFeatureSet(project, name) {
      await pool.transaction(async (client) => {
        await lockObject(client, 'feature_set', project, name);
        const deleted = await client.query('DELETE FROM feature_sets WHERE project = $1 AND name = $2', [
          project,
          name,
        ]);
        if (deleted.rowCount === 0) throw notFound(`project "${project}" has no feature set "${name}"`);
        await recordChange(client);
      });
    },

    async applyStreamAggregation(project, input, { force }) {
      inProject(project);
      validateStreamAggregationDefinition(input);
      const definition = canonicalStreamAggregation(input);
      return pool.transaction(async (client) => {
        // The definition and its view share a name, so the view's lock serializes both.
        await lockObject(client, 'feature_view', project, definition.name);
        const currentRows = await client.query<StreamAggregationRow>(
          'SELECT definition, updated_at FROM stream_aggregations WHERE project = $1 AND name = $2 FOR UPDATE',
          [project, definition.name],
        );
        const currentRow = currentRows.rows[0];
        if (!currentRow) {
          const existing = await client.query(
            'SELECT 1 FROM feature_views WHERE project = $1 AND name = $2',
            [project, definition.name],
          );
          if ((existing.rowCount ?? 0) > 0)
            throw new FStoreError(
              'failed_precondition',
              `stream_aggregation.name: feature view "${definition.name}" already exists and no stream aggregation produces it; delete it or choose another name`,
            );
        }
        const applied = await applyViewIn(
          client,
          project,
          producedFeatureView(definition),
          force,
          'stream_aggregation',
        );
        validateKeyFields(definition, applied.featureView.joinKeys);
        if (currentRow && isSameStreamAggregation(currentRow.definition, definition))
          return {
            streamAggregation: toStreamAggregation(currentRow),
            featureView: applied.featureView,
            outcome: applied.outcome === 'unchanged' ? 'unchanged' : 'updated',
          };
        const written = await client.query<StreamAggregationRow>(
          `INSERT INTO stream_aggregations (project, name, definition, updated_at)
           VALUES ($1, $2, $3, now())
           ON CONFLICT (project, name) DO UPDATE
             SET definition = excluded.definition, updated_at = excluded.updated_at
           RETURNING definition, updated_at`,
          [project, definition.name, JSON.stringify(definition)],
        );
        // applyViewIn announced the change already unless the view stayed as it was.
        if (applied.outcome === 'unchanged') await recordChange(client);
        return {
          streamAggregation: toStreamAggregation(firstRow(written.rows)),
          featureView: applied.featureView,
          outcome: currentRow ? 'updated' : 'created',
        };
      });
    },

    async getStreamAggregation(project, name) {
      const result = await pool.query<StreamAggregationRow>(
        'SELECT definition, updated_at FROM stream_aggregations WHERE project = $1 AND name = $2',
        [project, name],
      );
      const row = result.rows[0];
      if (!row) throw notFound(`project "${project}" has no stream aggregation "${name}"`);
      return toStreamAggregation(row);
    },

    async listStreamAggregations(project) {
      const result = await pool.query<StreamAggregationRow>(
        'SELECT definition, updated_at FROM stream_aggregations WHERE project = $1 ORDER BY name COLLATE "C"',
        [project],
      );
      return result.rows.map(toStreamAggregation);
    },

    async deleteStreamAggregation(project, name) {
      await pool.transaction(async (client) => {
        await lockObject(client, 'feature_view', project, name);
        const deleted = await client.query(
          'DELETE FROM stream_aggregations WHERE project = $1 AND name = $2',
          [project, name],
        );
        if (deleted.rowCount === 0)
          throw notFound(`project "${project}" has no stream aggregation "${name}"`);
        // Refused (and the definition kept: the transaction rolls back) while a feature set uses it.
        await deleteViewIn(client, project, name);
        await recordChange(client);
      });
    },

    async listProjects() {
      const result = await pool.query<{ project: string }>(
        `SELECT project FROM (
           SELECT project FROM entities UNION SELECT project FROM feature_views UNION SELECT project FROM feature_sets
         ) AS projects ORDER BY project COLLATE "C"`,
      );
      return result.rows.map((row) => row.project);
    },

    async loadSnapshot(): Promise<RegistrySnapshotData> {
      // REPEATABLE READ: the three reads see one instant, and the revision matches what they saw.
      return pool.transaction(
        async (client) => {
          const revision = await client.query<{ revision: string }>('SELECT revision FROM registry_revision');
          const versions = await client.query<VersionRow>(
            `${selectVersion} ORDER BY v.project COLLATE "C", v.name COLLATE "C", fv.version`,
          );
          const sets = await client.query<FeatureSetRow & { project: string }>(
            `SELECT project, name, features, description, updated_at FROM feature_sets
             ORDER BY project COLLATE "C", name COLLATE "C"`,
          );
          return {
            featureViewVersions: versions.rows.map(toFeatureView),
            featureSets: sets.rows.map((row) => ({ ...toFeatureSet(row), project: row.project })),
            revision: Number(firstRow(revision.rows).revision),
          };
        },
        { isolation: 'repeatable read', readOnly: true },
      );
    },

    async watch(listener) {
      if (closed)
        throw new FStoreError('unavailable', 'registry database (PostgreSQL): the registry is closed');
      const stop = await watchRegistryChanges(options, listener);
      const stopOnce = async () => {
        stopWatches.delete(stopOnce);
        await stop();
      };
      stopWatches.add(stopOnce);
      return stopOnce;
    },

    async close() {
      if (closed) return;
      closed = true;
      await Promise.all([...stopWatches].map((stop) => stop()));
      await pool.end();
    },
  };
  return registry;
}

type ObjectKind = 'entity' | 'feature_view' | 'feature_set';

interface EntityRow {
  name: string;
  join_keys: JoinKey[];
  description: string;
  updated_at: Date;
}

interface VersionRow {
  id: number;
  project: string;
  version: number;
  definition: FeatureViewDefinition;
  join_keys: JoinKey[];
  created_at: Date;
}

interface StreamAggregationRow {
  definition: StreamAggregationDefinition;
  updated_at: Date;
}

interface FeatureSetRow {
  name: string;
  features: string[];
  description: string;
  updated_at: Date;
}

const selectVersion = `SELECT v.id, v.project, fv.version, fv.definition, fv.join_keys, fv.created_at
  FROM feature_views v JOIN feature_view_versions fv ON fv.view_id = v.id`;

async function insertVersion(
  client: PoolClient,
  viewId: number,
  version: number,
  view: FeatureViewDefinition,
  joinKeys: readonly JoinKey[],
): Promise<Omit<FeatureView, 'project'>> {
  const inserted = await client.query<{ created_at: Date }>(
    `INSERT INTO feature_view_versions (view_id, version, definition, join_keys, created_at)
     VALUES ($1, $2, $3, $4, now()) RETURNING created_at`,
    [viewId, version, JSON.stringify(view), JSON.stringify(joinKeys)],
  );
  return { ...view, id: viewId, version, createdAt: firstRow(inserted.rows).created_at, joinKeys };
}

/** Names of the views whose current version lists `entity`, sorted. */
async function viewsUsingEntity(client: PoolClient, project: string, entity: string): Promise<string[]> {
  const result = await client.query<{ name: string }>(
    `SELECT v.name FROM feature_views v
     JOIN feature_view_versions fv ON fv.view_id = v.id AND fv.version = v.current_version
     WHERE v.project = $1 AND fv.definition -> 'entities' ? $2
     ORDER BY v.name COLLATE "C"`,
    [project, entity],
  );
  return result.rows.map((row) => row.name);
}

// The definitions are copied field by field, so whatever else a caller's object carries (a
// protobuf message, a FeatureView being re-applied) is never stored.
const entityDefinition = (entity: EntityDefinition): EntityDefinition => ({
  name: entity.name,
  joinKeys: entity.joinKeys.map((key) => ({ name: key.name, type: key.type })),
  description: entity.description ?? '',
});

const featureViewDefinition = (view: FeatureViewDefinition): FeatureViewDefinition => ({
  name: view.name,
  entities: [...view.entities],
  features: view.features.map((feature) => ({
    name: feature.name,
    type: feature.type,
    description: feature.description ?? '',
    tags: { ...feature.tags },
    // Definitions stored before the rules existed have none: not required, no bounds.
    required: feature.required === true,
    ...(feature.min !== undefined ? { min: feature.min } : {}),
    ...(feature.max !== undefined ? { max: feature.max } : {}),
    ...(feature.allowedValues !== undefined && feature.allowedValues.length > 0
      ? { allowedValues: [...feature.allowedValues] }
      : {}),
    ...(feature.maxNullRate !== undefined ? { maxNullRate: feature.maxNullRate } : {}),
    ...(feature.psiWarn !== undefined ? { psiWarn: feature.psiWarn } : {}),
    ...(feature.psiAlert !== undefined ? { psiAlert: feature.psiAlert } : {}),
  })),
  ttlMs: view.ttlMs,
  online: view.online,
  source: view.source,
  owner: view.owner ?? '',
  description: view.description ?? '',
  tags: { ...view.tags },
  ...(view.freshnessMs !== undefined ? { freshnessMs: view.freshnessMs } : {}),
  ...(view.driftMonitor
    ? {
        driftMonitor: {
          referenceProfile: view.driftMonitor.referenceProfile,
          intervalMs: view.driftMonitor.intervalMs,
          windowMs: view.driftMonitor.windowMs,
        },
      }
    : {}),
});

const featureSetDefinition = (featureSet: FeatureSetDefinition): FeatureSetDefinition => ({
  name: featureSet.name,
  features: [...featureSet.features],
  description: featureSet.description ?? '',
});

const toEntity = (row: EntityRow): Entity => ({
  name: row.name,
  joinKeys: row.join_keys,
  description: row.description,
  updatedAt: row.updated_at,
});

const toFeatureView = (row: VersionRow): FeatureView => ({
  ...featureViewDefinition(row.definition),
  id: row.id,
  project: row.project,
  version: row.version,
  createdAt: row.created_at,
  joinKeys: row.join_keys,
});

const toStreamAggregation = (row: StreamAggregationRow): StreamAggregation => ({
  ...canonicalStreamAggregation(row.definition),
  updatedAt: row.updated_at,
});

const toFeatureSet = (row: FeatureSetRow): FeatureSet => ({
  name: row.name,
  features: row.features,
  description: row.description,
  updatedAt: row.updated_at,
});

function firstRow<T>(rows: readonly T[]): T {
  const row = rows[0];
  if (row === undefined) throw new FStoreError('internal', 'registry database (PostgreSQL) returned no row');
  return row;
}

const describeKeys = (keys: readonly JoinKey[]) => keys.map((key) => `${key.name} ${key.type}`).join(', ');
const quoteList = (names: readonly string[]) => names.map((name) => `"${name}"`).join(', ');
