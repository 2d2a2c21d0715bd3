-- 15: a tenant's default one-click unsubscribe group (mailman tenants set
-- --unsubscribe-group): a mail of the tenant that says nothing of unsubscribe is of that
-- group. No row: the tenant has none (each mail says whether it is of a group).

CREATE TABLE IF NOT EXISTS tenant_unsubscribe (
    tenant             VARCHAR(64) NOT NULL PRIMARY KEY,
    unsubscribe_group  VARCHAR(64) NOT NULL,
    mailto             VARCHAR(254) NULL,
    updated_at         DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
