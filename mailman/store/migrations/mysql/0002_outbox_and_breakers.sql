-- 2: the transactional outbox and the shared circuit-breaker state.

CREATE TABLE IF NOT EXISTS outbox (
    id           BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    mail_id      VARCHAR(64) NOT NULL,
    accepted_at  DOUBLE NOT NULL,
    leased_by    VARCHAR(255) NULL,
    leased_until DOUBLE NULL,
    INDEX outbox_by_lease (leased_until, id),
    INDEX outbox_by_mail (mail_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS breakers (
    provider   VARCHAR(64) NOT NULL PRIMARY KEY,
    state      VARCHAR(16) NOT NULL,
    opened_at  DOUBLE NULL,
    updated_at DOUBLE NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
