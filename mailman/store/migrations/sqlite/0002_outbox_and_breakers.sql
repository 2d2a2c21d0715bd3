-- 2: the transactional outbox and the shared circuit-breaker state.

CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- claim order: oldest first
    mail_id      TEXT NOT NULL,
    accepted_at  REAL NOT NULL,
    leased_by    TEXT NULL,  -- the relay that claimed it ...
    leased_until REAL NULL   -- ... until then (unix time); NULL: never claimed
);
-- claim_outbox: the claimable entries, by id.
CREATE INDEX outbox_by_lease ON outbox (leased_until, id);
-- requeue_unfinished: does this mail have an entry?
CREATE INDEX outbox_by_mail ON outbox (mail_id);

CREATE TABLE breakers (
    provider   TEXT PRIMARY KEY,
    state      TEXT NOT NULL,  -- closed | open | half_open
    opened_at  REAL NULL,
    updated_at REAL NOT NULL   -- the newest wins
);
