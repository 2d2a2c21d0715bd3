-- 16: a provider's message id is looked up on the attempts alone. The index on
-- mails (provider_message_id) goes: a provider's ids are random, so each one sent was a
-- page of that index written again at every commit. A mail given an id that none of
-- its attempts has (a processed event before its sender's record, in older versions)
-- gives it to its newest attempt without one first, so it is still found. (Run again
-- after a crash, the UPDATE finds nothing left to do and the DROP an index gone.)

UPDATE attempts AS a
JOIN (
    SELECT MAX(b.id) AS id, m.provider_message_id AS message_id
    FROM mails AS m JOIN attempts AS b ON b.mail_id = m.id
    WHERE m.provider_message_id IS NOT NULL
      AND b.message_id IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM attempts AS c
          WHERE c.mail_id = m.id AND c.message_id = m.provider_message_id
      )
    GROUP BY m.id, m.provider_message_id
) AS t ON a.id = t.id
SET a.message_id = t.message_id;
DROP INDEX mails_by_provider_message ON mails;
