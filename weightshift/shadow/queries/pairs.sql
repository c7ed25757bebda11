-- The pairs of one comparison: the stable bundle against one candidate. Copies whose
-- candidate never answered (candidate_version unknown) count against it as mirror losses.
SELECT *,
       stable.outcome IN ('ok', 'refused', 'blocked')
         AND candidate.outcome IN ('ok', 'refused', 'blocked') AS answered,
       stable.outcome = 'ok' AND candidate.outcome = 'ok' AS both_ok
FROM in_window
WHERE stable_version = :stable_version
  AND (candidate_version = :candidate_version OR candidate_version IS NULL)
