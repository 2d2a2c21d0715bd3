-- 11: each tenant's suppression list: addresses its mails never go to (store.suppressions).
-- group_name '' suppresses every mail; a name, the mails of that unsubscribe group.

CREATE TABLE suppressions (
    tenant     TEXT NOT NULL,
    address    TEXT NOT NULL,            -- normalised: trimmed, lower-case
    group_name TEXT NOT NULL DEFAULT '', -- '': every mail
    reason     TEXT NOT NULL,            -- core.model.SuppressionReason
    source     TEXT NOT NULL,            -- a provider's name, api, cli, import:...
    created_at REAL NOT NULL,
    PRIMARY KEY (tenant, address, group_name)
);
CREATE INDEX suppressions_by_reason ON suppressions (tenant, reason, address);
