-- 004: API keys. A key is `fsk_<id>_<secret>`; only a SHA-256 of the secret is kept (the secret
-- has 256 random bits, so a slow password hash would add nothing but latency to every call).
-- Keys are never deleted: revoking sets revoked_at, so the audit log's `key:<id>` stays meaningful.
CREATE TABLE api_keys (
  id           text        PRIMARY KEY,
  name         text        NOT NULL,
  secret_hash  bytea       NOT NULL,
  -- [{"role": "reader", "project": "fraud"}, ...]; "*" binds every project
  bindings     jsonb       NOT NULL,
  created_by   text        NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz,
  revoked_at   timestamptz,
  last_used_at timestamptz
);
