-- 7: status callbacks: a mail's callback URL, the status its last callback was
-- queued for, and the callbacks to send (actors.callbacks).

ALTER TABLE mails ADD COLUMN callback_url TEXT NULL;
ALTER TABLE mails ADD COLUMN callback_status TEXT NULL;
CREATE TABLE callbacks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- also the order of a mail's changes
    mail_id      TEXT NOT NULL,
    url          TEXT NOT NULL,
    status       TEXT NOT NULL,  -- the status the mail moved to...
    at           REAL NOT NULL,  -- ...when (the mail's updated_at)
    provider     TEXT NULL,
    reason       TEXT NULL,
    created_at   REAL NOT NULL,  -- queued: the retry window starts
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,  -- due then
    leased_by    TEXT NULL,      -- the notifier sending it...
    leased_until REAL NULL,      -- ...until then
    done_at      REAL NULL,      -- delivered or given up
    outcome      TEXT NULL,      -- delivered | gave-up
    last_error   TEXT NULL
);
CREATE INDEX callbacks_due ON callbacks (done_at, next_at);
CREATE INDEX callbacks_by_mail ON callbacks (mail_id, id);
