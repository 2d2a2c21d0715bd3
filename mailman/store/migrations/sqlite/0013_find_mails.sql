-- 13: finding mails (GET /mail by recipient, tag, metadata, status, time). Each mail's
-- recipients (to, cc, bcc; lowercased) and labels (its tags, and its metadata values of
-- at most 255 characters) are rows of their own, written with the mail in one
-- transaction, each carrying the mail's tenant and creation time: an index then finds a
-- tenant's mails to one address, newest first, without reading any other mail. Retention
-- deletes them with the mail's content (purge) or the mail (drop, erase).

CREATE TABLE mail_recipients (
    mail_id    TEXT NOT NULL,
    address    TEXT NOT NULL,   -- lowercased
    tenant     TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (mail_id, address)
) WITHOUT ROWID;
CREATE INDEX mail_recipients_by_address ON mail_recipients (address, tenant, created_at, mail_id);

CREATE TABLE mail_labels (
    mail_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,   -- tag or metadata
    name       TEXT NOT NULL,   -- the tag, or the metadata key
    value      TEXT NOT NULL,   -- the metadata value ('' for a tag)
    tenant     TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (mail_id, kind, name, value)
) WITHOUT ROWID;
CREATE INDEX mail_labels_by_label ON mail_labels (kind, name, value, tenant, created_at, mail_id);

-- The listing's order is (created_at, id), newest first, within a tenant or across all;
-- mails_by_status (status, created_at) serves an admin's listing by status.
CREATE INDEX mails_by_tenant_time ON mails (tenant, created_at, id);
CREATE INDEX mails_by_tenant_status ON mails (tenant, status, created_at, id);
CREATE INDEX mails_by_time ON mails (created_at, id);

-- The mails already stored (a purged mail's stub has no recipient, tag nor metadata).
INSERT OR IGNORE INTO mail_recipients (mail_id, address, tenant, created_at)
    SELECT m.id, LOWER(json_extract(a.value, '$.email')), m.tenant, m.created_at
    FROM mails AS m, json_each(m.payload, '$.to') AS a;
INSERT OR IGNORE INTO mail_recipients (mail_id, address, tenant, created_at)
    SELECT m.id, LOWER(json_extract(a.value, '$.email')), m.tenant, m.created_at
    FROM mails AS m, json_each(m.payload, '$.cc') AS a;
INSERT OR IGNORE INTO mail_recipients (mail_id, address, tenant, created_at)
    SELECT m.id, LOWER(json_extract(a.value, '$.email')), m.tenant, m.created_at
    FROM mails AS m, json_each(m.payload, '$.bcc') AS a;
INSERT OR IGNORE INTO mail_labels (mail_id, kind, name, value, tenant, created_at)
    SELECT m.id, 'tag', t.value, '', m.tenant, m.created_at
    FROM mails AS m, json_each(m.payload, '$.tags') AS t;
INSERT OR IGNORE INTO mail_labels (mail_id, kind, name, value, tenant, created_at)
    SELECT m.id, 'metadata', json_extract(e.value, '$[0]'), json_extract(e.value, '$[1]'),
        m.tenant, m.created_at
    FROM mails AS m, json_each(m.payload, '$.metadata') AS e
    WHERE length(json_extract(e.value, '$[1]')) <= 255;
