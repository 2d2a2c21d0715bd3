-- 17: fewer indexes for a new mail to enter. Every index a mail enters is a page or
-- more of the log written at the commit (about 2.5 pages per index per commit of 12
-- accepts), and every status change rewrites each index holding its status or
-- updated_at.
--
-- Only scheduled mails are released by their time, only final mails are purged and
-- dropped: their indexes now hold only them, so neither accepting a mail nor sending
-- it writes them. A query reads such an index only when its WHERE repeats each term of
-- the index's (store.mails, store.retention). Final is written as three comparisons: a
-- list of more than two values after IN is a temporary table SQLite builds for every
-- row it checks, which cost an insert as much as the index it spared.
--
-- mails_by_tenant (tenant, id) served an erasure by address alone, which now pages in
-- the order of creation through the listing's mails_by_tenant_time.

DROP INDEX mails_by_due;
CREATE INDEX mails_by_due ON mails (status, due_at) WHERE status = 'scheduled';
DROP INDEX mails_by_finish;
CREATE INDEX mails_by_finish ON mails (updated_at)
    WHERE status <> 'queued' AND status <> 'scheduled' AND status <> 'sending';
DROP INDEX mails_to_purge;
CREATE INDEX mails_to_purge ON mails (updated_at)
    WHERE purged_at IS NULL
      AND status <> 'queued' AND status <> 'scheduled' AND status <> 'sending';
DROP INDEX mails_by_tenant;
