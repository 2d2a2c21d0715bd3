-- 8: PLACEHOLDER in the figures branch only, so that 9 follows 1..8 without a gap.
-- The retention branch's 0008_retention.sql replaces this file at the merge (take theirs).
SELECT 1
