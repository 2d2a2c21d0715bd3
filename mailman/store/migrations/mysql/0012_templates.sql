-- 12: each tenant's templates (/templates), every version kept: one row per version,
-- the latest the default. DELETE removes every row of a template.

CREATE TABLE IF NOT EXISTS templates (
    id         VARCHAR(64) NOT NULL,
    tenant     VARCHAR(64) NOT NULL,
    name       VARCHAR(128) NOT NULL,
    version    INT NOT NULL,
    subject    TEXT NULL,
    html       LONGTEXT NULL,
    text       LONGTEXT NULL,
    created_at DOUBLE NOT NULL,
    PRIMARY KEY (id, version),
    UNIQUE KEY templates_name (tenant, name, version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
