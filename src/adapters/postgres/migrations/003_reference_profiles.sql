-- 003: saved reference profiles for drift reports. Each save of a (project, name) is a new
-- version; `profiles` holds each profiled feature's encoded profile (src/domain/profile), keyed by
-- feature name in a msgpack map, opaque to the database.
CREATE TABLE reference_profiles (
  project      text        NOT NULL,
  name         text        NOT NULL,
  version      integer     NOT NULL CHECK (version > 0),
  feature_view text        NOT NULL,
  view_version integer     NOT NULL,
  -- {"offline": {"startMicros": …, "endMicros": …}} or {"served": {}}
  source       jsonb       NOT NULL,
  description  text        NOT NULL,
  row_count    bigint      NOT NULL,
  profiles     bytea       NOT NULL,
  created_at   timestamptz NOT NULL,
  PRIMARY KEY (project, name, version)
);

CREATE INDEX reference_profiles_view ON reference_profiles (project, feature_view);
