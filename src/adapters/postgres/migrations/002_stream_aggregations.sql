-- 002: stream aggregation definitions. Each produces the feature view of the same (project, name),
-- written in the same transaction; the view is an ordinary row of feature_views.
CREATE TABLE stream_aggregations (
  project    text        NOT NULL,
  name       text        NOT NULL,
  -- The StreamAggregationDefinition as applied (src/domain/stream-aggregation.ts).
  definition jsonb       NOT NULL,
  updated_at timestamptz NOT NULL,
  PRIMARY KEY (project, name)
);
