-- 6: what providers report after taking a mail (their webhooks).

CREATE TABLE events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    mail_id   TEXT NOT NULL,
    provider  TEXT NOT NULL,
    kind      TEXT NOT NULL,   -- actors.messages.EventKind
    at        REAL NOT NULL,   -- when the provider says it happened
    dedupe    TEXT NOT NULL,   -- the provider's unique event id
    bounce    TEXT NULL,       -- hard | soft
    reason    TEXT NULL,
    recipient TEXT NULL
);
CREATE UNIQUE INDEX events_once ON events (provider, dedupe);
CREATE INDEX events_by_mail ON events (mail_id, at);
CREATE INDEX mails_by_provider_message ON mails (provider_message_id);
CREATE INDEX attempts_by_message ON attempts (message_id);
