-- 4: the round an outbox entry starts (a failed mail sent again starts a new one).

ALTER TABLE outbox ADD COLUMN round INTEGER NOT NULL DEFAULT 0;
