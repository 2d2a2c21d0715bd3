-- 10: a provider chain per tenant (mailman tenants set), and the chain each mail was
-- accepted with (NULL: the deployment's MAILMAN_PROVIDERS), which every hop follows.

CREATE TABLE tenant_chains (
    tenant     TEXT PRIMARY KEY,
    providers  TEXT NOT NULL,   -- as written: postmark,ses or sendgrid:3,mailgun:1
    updated_at REAL NOT NULL
);
ALTER TABLE mails ADD COLUMN providers TEXT NULL;
