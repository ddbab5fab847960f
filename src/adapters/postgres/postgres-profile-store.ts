import { Packr } from 'msgpackr';
import { FStoreError, notFound } from '../../domain/errors.js';
import { profileNamePattern, validateName } from '../../domain/registry-rules.js';
import type {
  NewReferenceProfile,
  ProfileSourceDescription,
  ProfileStore,
  ReferenceProfileInfo,
  StoredReferenceProfile,
} from '../../ports/profile-store.js';
import { createMigratedPool } from './migrate.js';
import { type PostgresOptionsInput, resolvePostgresOptions } from './options.js';

/** Reference profiles in PostgreSQL (migration 003): one row per (project, name, version). */

const purpose = 'registry database';
// Maps as msgpack maps, byte strings as bin: the stored value is plain msgpack any tool can read.
const packr = new Packr({ useRecords: false, mapsAsObjects: false });

interface ProfileRow {
  project: string;
  name: string;
  version: number;
  feature_view: string;
  view_version: number;
  source: ProfileSourceDescription;
  description: string;
  row_count: string;
  created_at: Date;
  profiles?: Buffer;
}

const infoColumns =
  'project, name, version, feature_view, view_version, source, description, row_count::text, created_at';

function toInfo(row: ProfileRow): ReferenceProfileInfo {
  return {
    project: row.project,
    name: row.name,
    version: row.version,
    featureView: row.feature_view,
    viewVersion: row.view_version,
    source: row.source,
    description: row.description,
    rows: Number(row.row_count),
    createdAt: row.created_at,
  };
}

function decodeProfiles(bytes: Buffer, where: string): Map<string, Uint8Array> {
  const decoded: unknown = packr.unpack(bytes);
  if (!(decoded instanceof Map))
    throw new FStoreError('internal', `${where}: the stored profiles are not a msgpack map`);
  const profiles = new Map<string, Uint8Array>();
  for (const [feature, profile] of decoded) {
    if (typeof feature !== 'string' || !(profile instanceof Uint8Array))
      throw new FStoreError('internal', `${where}: a stored profile entry is malformed`);
    // A copy that owns its buffer: it may be transferred to a worker.
    profiles.set(feature, new Uint8Array(profile));
  }
  return profiles;
}

export async function createPostgresProfileStore(input: PostgresOptionsInput): Promise<ProfileStore> {
  const options = resolvePostgresOptions(input);
  const pool = await createMigratedPool(options, purpose);

  return {
    async saveReferenceProfile(profile: NewReferenceProfile): Promise<StoredReferenceProfile> {
      validateName('project', profile.project);
      validateName('name', profile.name, profileNamePattern);
      const bytes = packr.pack(new Map(profile.profiles));
      return pool.transaction(async (client) => {
        // Savers of one name take turns, so each gets the next version.
        await client.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [
          `fstore.${options.schema}.reference_profile.${profile.project}.${profile.name}`,
        ]);
        const result = await client.query<ProfileRow>(
          `INSERT INTO reference_profiles
               (project, name, version, feature_view, view_version, source, description, row_count, profiles, created_at)
             SELECT $1, $2, COALESCE(MAX(version), 0) + 1, $3, $4, $5, $6, $7, $8, now()
               FROM reference_profiles WHERE project = $1 AND name = $2
             RETURNING ${infoColumns}`,
          [
            profile.project,
            profile.name,
            profile.featureView,
            profile.viewVersion,
            JSON.stringify(profile.source),
            profile.description,
            profile.rows,
            bytes,
          ],
        );
        return { ...toInfo(result.rows[0] as ProfileRow), profiles: new Map(profile.profiles) };
      });
    },

    async getReferenceProfile(project, name, version = 0) {
      const result = await pool.query<ProfileRow>(
        `SELECT ${infoColumns}, profiles FROM reference_profiles
           WHERE project = $1 AND name = $2 AND ($3::integer = 0 OR version = $3)
           ORDER BY version DESC LIMIT 1`,
        [project, name, version],
      );
      const row = result.rows[0];
      if (!row)
        throw notFound(
          version === 0
            ? `reference profile "${name}" of project "${project}" not found`
            : `reference profile "${name}" version ${version} of project "${project}" not found`,
        );
      return {
        ...toInfo(row),
        profiles: decodeProfiles(row.profiles as Buffer, `reference profile "${name}" v${row.version}`),
      };
    },

    async listReferenceProfiles(project, featureView) {
      const result = await pool.query<ProfileRow>(
        `SELECT DISTINCT ON (name) ${infoColumns} FROM reference_profiles
           WHERE project = $1 AND ($2::text IS NULL OR feature_view = $2)
           ORDER BY name, version DESC`,
        [project, featureView ?? null],
      );
      return result.rows
        .map(toInfo)
        .sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.name < b.name ? -1 : 1));
    },

    async deleteReferenceProfile(project, name) {
      const result = await pool.query('DELETE FROM reference_profiles WHERE project = $1 AND name = $2', [
        project,
        name,
      ]);
      if (!result.rowCount) throw notFound(`reference profile "${name}" of project "${project}" not found`);
    },

    close: () => pool.end(),
  };
}
