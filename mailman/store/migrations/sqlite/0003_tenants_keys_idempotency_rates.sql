-- 3: tenants, API keys, idempotency keys and rate-limit buckets.

ALTER TABLE mails ADD COLUMN tenant TEXT NOT NULL DEFAULT '';
-- list_mails: a tenant's mails, newest (highest ULID) first.
CREATE INDEX mails_by_tenant ON mails (tenant, id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    secret_hash  TEXT NOT NULL UNIQUE,  -- SHA-256 of the key; the key itself is never kept
    tenant       TEXT NOT NULL,
    scopes       TEXT NOT NULL,         -- comma list
    rate         REAL NULL,             -- mails/s; NULL: the service default
    created_at   REAL NOT NULL,
    last_used_at REAL NULL,
    revoked_at   REAL NULL
);

CREATE TABLE idempotency (
    tenant      TEXT NOT NULL,
    key_hash    TEXT NOT NULL,  -- SHA-256 of the Idempotency-Key header
    fingerprint TEXT NOT NULL,  -- SHA-256 of the request body
    mail_id     TEXT NOT NULL,
    expires_at  REAL NOT NULL,
    PRIMARY KEY (tenant, key_hash)
);
CREATE INDEX idempotency_by_expiry ON idempotency (expires_at);

CREATE TABLE rate_buckets (
    id         TEXT PRIMARY KEY,
    tokens     REAL NOT NULL,
    updated_at REAL NOT NULL
);
