-- 1: mails and their attempts.

CREATE TABLE mails (
    id                  TEXT PRIMARY KEY,
    status              TEXT NOT NULL,
    payload             TEXT NOT NULL,  -- the Mail, as actors.messages.encode made it
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    provider            TEXT NULL,
    provider_message_id TEXT NULL,
    reason              TEXT NULL
);
CREATE INDEX mails_by_status ON mails (status, created_at);

CREATE TABLE attempts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    mail_id    TEXT NOT NULL REFERENCES mails (id),
    provider   TEXT NOT NULL,
    round      INTEGER NOT NULL,
    at         REAL NOT NULL,
    outcome    TEXT NOT NULL,
    reason     TEXT NULL,
    message_id TEXT NULL
);
-- A replayed attempt is recorded once (INSERT OR IGNORE).
CREATE UNIQUE INDEX attempts_once ON attempts (mail_id, provider, round, at, outcome);
