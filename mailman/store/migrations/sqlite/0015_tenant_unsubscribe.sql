-- 15: a tenant's default one-click unsubscribe group (mailman tenants set
-- --unsubscribe-group): a mail of the tenant that says nothing of unsubscribe is of that
-- group. No row: the tenant has none (each mail says whether it is of a group).

CREATE TABLE tenant_unsubscribe (
    tenant             TEXT PRIMARY KEY,
    unsubscribe_group  TEXT NOT NULL,   -- newsletter
    mailto             TEXT NULL,       -- offered as mailto: beside the link
    updated_at         REAL NOT NULL
);
