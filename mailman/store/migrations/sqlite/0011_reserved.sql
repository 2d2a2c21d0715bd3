-- 11: held for the suppressions of issue 20, whose branch numbers its table 11. Nothing here.
SELECT 1;
