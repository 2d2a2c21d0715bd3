-- 3: tenants, API keys, idempotency keys and rate-limit buckets.
--
-- ADD COLUMN and CREATE INDEX have no IF NOT EXISTS in MySQL 8: a re-run skips
-- them by their "already there" errors (mysql.ALREADY_DONE).

ALTER TABLE mails ADD COLUMN tenant VARCHAR(64) NOT NULL DEFAULT '';
CREATE INDEX mails_by_tenant ON mails (tenant, id);

CREATE TABLE IF NOT EXISTS api_keys (
    id           VARCHAR(64) NOT NULL PRIMARY KEY,
    secret_hash  CHAR(64) NOT NULL,
    tenant       VARCHAR(64) NOT NULL,
    scopes       VARCHAR(255) NOT NULL,
    rate         DOUBLE NULL,
    created_at   DOUBLE NOT NULL,
    last_used_at DOUBLE NULL,
    revoked_at   DOUBLE NULL,
    UNIQUE KEY api_keys_by_hash (secret_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS idempotency (
    tenant      VARCHAR(64) NOT NULL,
    key_hash    CHAR(64) NOT NULL,
    fingerprint CHAR(64) NOT NULL,
    mail_id     VARCHAR(64) NOT NULL,
    expires_at  DOUBLE NOT NULL,
    PRIMARY KEY (tenant, key_hash),
    INDEX idempotency_by_expiry (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS rate_buckets (
    id         VARCHAR(128) NOT NULL PRIMARY KEY,
    tokens     DOUBLE NOT NULL,
    updated_at DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
