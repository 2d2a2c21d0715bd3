-- 9: the figures /metrics and the dashboard read (store.summary), kept as mails move,
-- each figure's count of the rows there now. Only figure, label, sublabel, shard are
-- the key (SQLite has one writer: shard 0).

CREATE TABLE figures (
    figure   TEXT NOT NULL,              -- mails, attempts, retries, suppressed
    label    TEXT NOT NULL DEFAULT '',   -- a status (mails) or a provider
    sublabel TEXT NOT NULL DEFAULT '',   -- an outcome (attempts)
    shard    INTEGER NOT NULL DEFAULT 0,
    amount   INTEGER NOT NULL,
    PRIMARY KEY (figure, label, sublabel, shard)
) WITHOUT ROWID;
INSERT INTO figures (figure, label, sublabel, shard, amount)
    SELECT 'mails', status, '', 0, COUNT(*) FROM mails GROUP BY status;
INSERT INTO figures (figure, label, sublabel, shard, amount)
    SELECT 'attempts', provider, outcome, 0, COUNT(*) FROM attempts GROUP BY provider, outcome;
INSERT INTO figures (figure, label, sublabel, shard, amount)
    SELECT 'retries', provider, '', 0, COUNT(*) FROM attempts WHERE round > 0 GROUP BY provider;
INSERT INTO figures (figure, label, sublabel, shard, amount)
    SELECT 'suppressed', provider, '', 0, COUNT(*) FROM attempts
    WHERE checked = 'taken' GROUP BY provider;
-- Dead letters not replayed are counted from this index (a range over those alone).
-- 8 (retention) makes the same index: then this is a no-op.
CREATE INDEX IF NOT EXISTS dead_letters_by_replay ON dead_letters (replayed_at);
