-- The records in the report's window. "date" prunes Athena's partitions; "time" is exact
-- (ISO-8601 UTC with milliseconds, so the strings sort as times: docs/shadow-records.md).
SELECT *
FROM shadow_pairs
WHERE model = :model
  AND "date" >= :since_date AND "date" <= :until_date
  AND "time" >= :since AND "time" < :until
