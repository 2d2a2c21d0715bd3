-- 16: a provider's message id is looked up on the attempts alone. The index on
-- mails (provider_message_id) goes: a provider's ids are random, so each one sent was a
-- page of that index written again at every commit (about 6 KB of WAL per delivered
-- mail). The attempts' index keeps only the ids there are (no row for an attempt
-- still pending). A mail given an id that none of its attempts has (a processed event
-- before its sender's record, in older versions) gives it to its newest attempt
-- without one first, so it is still found.

UPDATE attempts
SET message_id = (SELECT m.provider_message_id FROM mails AS m WHERE m.id = attempts.mail_id)
WHERE id IN (
    SELECT MAX(b.id)
    FROM mails AS m JOIN attempts AS b ON b.mail_id = m.id
    WHERE m.provider_message_id IS NOT NULL
      AND b.message_id IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM attempts AS c
          WHERE c.mail_id = m.id AND c.message_id = m.provider_message_id
      )
    GROUP BY m.id
);
DROP INDEX mails_by_provider_message;
DROP INDEX attempts_by_message;
CREATE INDEX attempts_by_message ON attempts (message_id) WHERE message_id IS NOT NULL;
