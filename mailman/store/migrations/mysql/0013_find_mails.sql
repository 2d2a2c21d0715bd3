-- 13: finding mails (GET /mail by recipient, tag, metadata, status, time). Each mail's
-- recipients (to, cc, bcc, lowercased) and labels (its tags, and its metadata values of
-- at most 255 characters) are rows of their own, written with the mail in one
-- transaction, each carrying the mail's tenant and creation time: an index then finds a
-- tenant's mails to one address, newest first, without reading any other mail. Retention
-- deletes them with the mail's content (purge) or the mail (drop, erase).
--
-- A value is VARBINARY: compared byte for byte (utf8mb4_bin pads, so 42 would equal
-- '42 ' in a VARCHAR). CREATE INDEX has no IF NOT EXISTS in MySQL 8: a re-run skips it
-- by its "already there" error (mysql.ALREADY_DONE), and the backfill updates nothing
-- it finds there already.

CREATE TABLE IF NOT EXISTS mail_recipients (
    mail_id    VARCHAR(64) NOT NULL,
    address    VARCHAR(254) NOT NULL,
    tenant     VARCHAR(64) NOT NULL,
    created_at DOUBLE NOT NULL,
    PRIMARY KEY (mail_id, address),
    INDEX mail_recipients_by_address (address, tenant, created_at, mail_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS mail_labels (
    mail_id    VARCHAR(64) NOT NULL,
    kind       VARCHAR(8) NOT NULL,
    name       VARCHAR(128) NOT NULL,
    value      VARBINARY(1020) NOT NULL,
    tenant     VARCHAR(64) NOT NULL,
    created_at DOUBLE NOT NULL,
    PRIMARY KEY (mail_id, kind, name, value),
    INDEX mail_labels_by_label (kind, name, value, tenant, created_at, mail_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE INDEX mails_by_tenant_time ON mails (tenant, created_at, id);
CREATE INDEX mails_by_tenant_status ON mails (tenant, status, created_at, id);
CREATE INDEX mails_by_time ON mails (created_at, id);

INSERT INTO mail_recipients (mail_id, address, tenant, created_at)
    SELECT m.id, LOWER(a.email), m.tenant, m.created_at
    FROM mails AS m, JSON_TABLE(m.payload, '$.to[*]' COLUMNS (email VARCHAR(254) PATH '$.email')) AS a
    ON DUPLICATE KEY UPDATE address = mail_recipients.address;
INSERT INTO mail_recipients (mail_id, address, tenant, created_at)
    SELECT m.id, LOWER(a.email), m.tenant, m.created_at
    FROM mails AS m, JSON_TABLE(m.payload, '$.cc[*]' COLUMNS (email VARCHAR(254) PATH '$.email')) AS a
    ON DUPLICATE KEY UPDATE address = mail_recipients.address;
INSERT INTO mail_recipients (mail_id, address, tenant, created_at)
    SELECT m.id, LOWER(a.email), m.tenant, m.created_at
    FROM mails AS m, JSON_TABLE(m.payload, '$.bcc[*]' COLUMNS (email VARCHAR(254) PATH '$.email')) AS a
    ON DUPLICATE KEY UPDATE address = mail_recipients.address;
INSERT INTO mail_labels (mail_id, kind, name, value, tenant, created_at)
    SELECT m.id, 'tag', t.tag, '', m.tenant, m.created_at
    FROM mails AS m, JSON_TABLE(m.payload, '$.tags[*]' COLUMNS (tag VARCHAR(128) PATH '$')) AS t
    ON DUPLICATE KEY UPDATE name = mail_labels.name;
INSERT INTO mail_labels (mail_id, kind, name, value, tenant, created_at)
    SELECT m.id, 'metadata', e.name, e.value, m.tenant, m.created_at
    FROM mails AS m, JSON_TABLE(m.payload, '$.metadata[*]' COLUMNS (
        name VARCHAR(64) PATH '$[0]', value VARCHAR(1000) PATH '$[1]')) AS e
    WHERE CHAR_LENGTH(e.value) <= 255
    ON DUPLICATE KEY UPDATE name = mail_labels.name;
