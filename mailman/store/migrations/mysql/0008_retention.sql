-- 8: retention and erasure (store.retention): when a mail's content was erased, and
-- the indexes that find what to purge, and a mail's rows, without a scan.

ALTER TABLE mails ADD COLUMN purged_at DOUBLE NULL;
CREATE INDEX mails_to_purge ON mails (purged_at, updated_at);
CREATE INDEX mails_by_finish ON mails (status, updated_at);
CREATE INDEX idempotency_by_mail ON idempotency (mail_id);
CREATE INDEX dead_letters_by_mail ON dead_letters (mail_id);
CREATE INDEX dead_letters_by_replay ON dead_letters (replayed_at)
