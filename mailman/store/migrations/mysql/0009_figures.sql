-- 9: the figures /metrics and the dashboard read (store.summary), kept as mails move,
-- each figure's count of the rows there now. A figure has several rows (shard: each
-- transaction adds to one chosen at random), summed when read. The backfill first
-- empties the table: run again after a failure part way, it counts once.

CREATE TABLE IF NOT EXISTS figures (
    figure   VARCHAR(16) NOT NULL,              -- mails, attempts, retries, suppressed
    label    VARCHAR(64) NOT NULL DEFAULT '',   -- a status (mails) or a provider
    sublabel VARCHAR(16) NOT NULL DEFAULT '',   -- an outcome (attempts)
    shard    SMALLINT NOT NULL DEFAULT 0,
    amount   BIGINT NOT NULL,
    PRIMARY KEY (figure, label, sublabel, shard)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
DELETE FROM figures;
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
-- 8 (retention) makes the same index: then this one is "already there" (1061), skipped.
CREATE INDEX dead_letters_by_replay ON dead_letters (replayed_at);
