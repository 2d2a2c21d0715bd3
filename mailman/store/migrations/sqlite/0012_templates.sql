-- 12: each tenant's templates (/templates), every version kept: one row per version,
-- the latest the default. DELETE removes every row of a template.

CREATE TABLE templates (
    id         TEXT NOT NULL,      -- the template's id, the same for every version
    tenant     TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,   -- 1, 2...
    subject    TEXT NULL,          -- Handlebars source, as written
    html       TEXT NULL,
    text       TEXT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (id, version),
    UNIQUE (tenant, name, version)
);
