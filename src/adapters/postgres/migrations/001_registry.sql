-- 001: the registry. Runs inside the migration transaction with search_path set to the FStore
-- schema, so table names are unqualified. Projects have no table: a project exists while it
-- holds an entity, a feature view or a feature set.

CREATE TABLE entities (
  project     text        NOT NULL,
  name        text        NOT NULL,
  -- [{"name": "user_id", "type": "int64"}, ...] in key order
  join_keys   jsonb       NOT NULL,
  description text        NOT NULL,
  updated_at  timestamptz NOT NULL,
  PRIMARY KEY (project, name)
);

-- One row per view, whatever its number of versions. The id is stable across versions and never
-- reused (an identity never goes back), because online keys embed it: a view deleted and created
-- again gets a new id, so values written under the old one can never be read as the new one's.
CREATE TABLE feature_views (
  id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  project         text    NOT NULL,
  name            text    NOT NULL,
  current_version integer NOT NULL,
  UNIQUE (project, name)
);

-- Every recorded version. `definition` is the FeatureViewDefinition as applied; `join_keys` are
-- its entities' join keys frozen when the version was applied (a later entity change does not
-- rewrite history).
CREATE TABLE feature_view_versions (
  view_id    integer     NOT NULL REFERENCES feature_views (id) ON DELETE CASCADE,
  version    integer     NOT NULL CHECK (version > 0),
  definition jsonb       NOT NULL,
  join_keys  jsonb       NOT NULL,
  created_at timestamptz NOT NULL,
  PRIMARY KEY (view_id, version)
);

-- The current version must exist; checked at commit, since the view row and its first version
-- are written in one transaction.
ALTER TABLE feature_views
  ADD CONSTRAINT feature_views_current_version_fkey
  FOREIGN KEY (id, current_version) REFERENCES feature_view_versions (view_id, version)
  DEFERRABLE INITIALLY DEFERRED;

CREATE TABLE feature_sets (
  project     text        NOT NULL,
  name        text        NOT NULL,
  -- ["view:feature", ...] in the order given
  features    jsonb       NOT NULL,
  description text        NOT NULL,
  updated_at  timestamptz NOT NULL,
  PRIMARY KEY (project, name)
);

-- One row, bumped by every change in the change's own transaction. A single row rather than a
-- sequence: its row lock orders the bumps as the commits, so a snapshot that sees revision N
-- also sees every change up to N (sequence values are handed out in start order, not commit order).
CREATE TABLE registry_revision (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  revision  bigint  NOT NULL
);
INSERT INTO registry_revision (revision) VALUES (0);
