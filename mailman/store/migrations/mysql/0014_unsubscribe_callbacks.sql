-- 14: callbacks of events besides a mail's status moves: NULL for a status callback, else
-- the event's JSON object (one-click unsubscribe: {"event": "unsubscribed", ...}),
-- which is what the callback posts besides its id, mail id and time.
--
-- ADD COLUMN has no IF NOT EXISTS in MySQL 8: a re-run skips it by its "already
-- there" error (mysql.ALREADY_DONE).

ALTER TABLE callbacks ADD COLUMN event TEXT NULL;
