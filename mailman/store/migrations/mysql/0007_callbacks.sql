-- 7: status callbacks: a mail's callback URL, the status its last callback was
-- queued for, and the callbacks to send (actors.callbacks).

ALTER TABLE mails ADD COLUMN callback_url TEXT NULL;
ALTER TABLE mails ADD COLUMN callback_status VARCHAR(16) NULL;
CREATE TABLE IF NOT EXISTS callbacks (
    id           BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    mail_id      VARCHAR(64) NOT NULL,
    url          TEXT NOT NULL,
    status       VARCHAR(16) NOT NULL,
    at           DOUBLE NOT NULL,
    provider     VARCHAR(64) NULL,
    reason       TEXT NULL,
    created_at   DOUBLE NOT NULL,
    attempts     INT NOT NULL DEFAULT 0,
    next_at      DOUBLE NOT NULL,
    leased_by    VARCHAR(255) NULL,
    leased_until DOUBLE NULL,
    done_at      DOUBLE NULL,
    outcome      VARCHAR(16) NULL,
    last_error   TEXT NULL,
    INDEX callbacks_due (done_at, next_at),
    INDEX callbacks_by_mail (mail_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
