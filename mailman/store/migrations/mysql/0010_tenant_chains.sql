-- 10: a provider chain per tenant (mailman tenants set), and the chain each mail was
-- accepted with (NULL: the deployment's MAILMAN_PROVIDERS), which every hop follows.
--
-- ADD COLUMN has no IF NOT EXISTS in MySQL 8: a re-run skips it by its "already
-- there" error (mysql.ALREADY_DONE).

CREATE TABLE IF NOT EXISTS tenant_chains (
    tenant     VARCHAR(64) NOT NULL PRIMARY KEY,
    providers  VARCHAR(255) NOT NULL,
    updated_at DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
ALTER TABLE mails ADD COLUMN providers VARCHAR(255) NULL;
