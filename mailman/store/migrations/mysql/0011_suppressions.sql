-- 11: each tenant's suppression list: addresses its mails never go to (store.suppressions).
-- group_name '' suppresses every mail. A name, the mails of that unsubscribe group.

CREATE TABLE IF NOT EXISTS suppressions (
    tenant     VARCHAR(64) NOT NULL,
    address    VARCHAR(320) NOT NULL,
    group_name VARCHAR(64) NOT NULL DEFAULT '',
    reason     VARCHAR(16) NOT NULL,
    source     VARCHAR(64) NOT NULL,
    created_at DOUBLE NOT NULL,
    PRIMARY KEY (tenant, address, group_name),
    INDEX suppressions_by_reason (tenant, reason, address)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
