-- 5: attempts recorded before their call (pending -> outcome, or unknown), when a
-- mail is next due (the sweeper), and dead letters.

ALTER TABLE mails ADD COLUMN due_at DOUBLE NULL;
CREATE INDEX mails_by_due ON mails (status, due_at);
ALTER TABLE attempts ADD COLUMN checked VARCHAR(16) NULL;
CREATE INDEX attempts_by_outcome ON attempts (outcome, at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    mailbox     VARCHAR(255) NOT NULL,
    mail_id     VARCHAR(64) NULL,
    payload     LONGTEXT NOT NULL,  -- base64 of the record's bytes
    error       TEXT NOT NULL,
    at          DOUBLE NOT NULL,
    replayed_at DOUBLE NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
