-- 5: attempts recorded before their call (pending -> outcome, or unknown), when a
-- mail is next due (the sweeper), and dead letters.

ALTER TABLE mails ADD COLUMN due_at REAL NULL;
CREATE INDEX mails_by_due ON mails (status, due_at);
ALTER TABLE attempts ADD COLUMN checked TEXT NULL;  -- unknown attempts: what asking found
CREATE INDEX attempts_by_outcome ON attempts (outcome, at);
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    mailbox     TEXT NOT NULL,
    mail_id     TEXT NULL,
    payload     TEXT NOT NULL,  -- base64 of the record's bytes as the mailbox held them
    error       TEXT NOT NULL,
    at          REAL NOT NULL,
    replayed_at REAL NULL
);
