-- 6: what providers report after taking a mail (their webhooks).

CREATE TABLE IF NOT EXISTS events (
    id        BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    mail_id   VARCHAR(64) NOT NULL,
    provider  VARCHAR(64) NOT NULL,
    kind      VARCHAR(16) NOT NULL,
    at        DOUBLE NOT NULL,
    dedupe    VARCHAR(255) NOT NULL,
    bounce    VARCHAR(8) NULL,
    reason    TEXT NULL,
    recipient VARCHAR(320) NULL,
    UNIQUE KEY events_once (provider, dedupe),
    INDEX events_by_mail (mail_id, at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX mails_by_provider_message ON mails (provider_message_id);
CREATE INDEX attempts_by_message ON attempts (message_id);
