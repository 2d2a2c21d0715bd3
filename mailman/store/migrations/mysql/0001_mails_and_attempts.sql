-- 1: mails and their attempts.

CREATE TABLE IF NOT EXISTS mails (
    id                  VARCHAR(64) NOT NULL PRIMARY KEY,
    status              VARCHAR(16) NOT NULL,
    payload             LONGTEXT NOT NULL,
    created_at          DOUBLE NOT NULL,
    updated_at          DOUBLE NOT NULL,
    provider            VARCHAR(64) NULL,
    provider_message_id VARCHAR(255) NULL,
    reason              TEXT NULL,
    INDEX mails_by_status (status, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS attempts (
    id         BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    mail_id    VARCHAR(64) NOT NULL,
    provider   VARCHAR(64) NOT NULL,
    round      INT NOT NULL,
    at         DOUBLE NOT NULL,
    outcome    VARCHAR(16) NOT NULL,
    reason     TEXT NULL,
    message_id VARCHAR(255) NULL,
    UNIQUE KEY attempts_once (mail_id, provider, round, at, outcome),
    FOREIGN KEY (mail_id) REFERENCES mails (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
