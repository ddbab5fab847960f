-- 005: the audit log, one row per audited call (src/ports/audit-log.ts). Names only: never values
-- or secrets. `id` orders the rows as written; "newest first" and paging go by it.
CREATE TABLE audit_events (
  id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  time       timestamptz NOT NULL,
  -- 'key:<id>', 'jwt:<sub>', 'cert:<name>', 'anonymous'
  principal  text        NOT NULL,
  -- full RPC name, 'fstore.v1.FeatureService/WriteOnlineFeatures'
  rpc        text        NOT NULL,
  project    text        NOT NULL,
  object     text        NOT NULL,
  -- gRPC status name, 'OK', 'INVALID_ARGUMENT', ...
  outcome    text        NOT NULL,
  rows       bigint      NOT NULL,
  request_id text        NOT NULL
);

-- The two common questions: "what happened in project P" and "what did principal X do", newest first.
CREATE INDEX audit_events_project ON audit_events (project, id DESC);
CREATE INDEX audit_events_principal ON audit_events (principal, id DESC);

-- Append-only, enforced by the database rather than by convention: an audit log is only evidence
-- if rows cannot be quietly edited or removed, and a trigger also stops a buggy code path, a
-- script or an operator's psql session using the application's credentials. Statement-level, so
-- even an UPDATE or DELETE matching no rows is refused (it is an attempt worth failing loudly).
-- It does not stop the table's owner or a superuser from dropping or disabling the trigger; that
-- is a deliberate, visible act (e.g. for retention: ALTER TABLE audit_events DISABLE TRIGGER ...).
CREATE FUNCTION audit_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
    USING HINT = 'audit events can only be inserted';
END;
$$;

CREATE TRIGGER audit_events_append_only
  BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
