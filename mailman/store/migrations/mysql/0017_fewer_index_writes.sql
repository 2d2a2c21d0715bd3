-- 17: fewer indexes for a new mail to enter. mails_by_tenant (tenant, id) served an
-- erasure by address alone, which now pages in the order of creation through the
-- listing's mails_by_tenant_time. (SQLite's indexes of scheduled and of final mails
-- hold only those mails from here on. MySQL has no partial index: its stay as they are.)

DROP INDEX mails_by_tenant ON mails
