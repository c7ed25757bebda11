-- The outcome table: how each pair's stable outcome met its candidate outcome.
SELECT stable.outcome AS stable_outcome, candidate.outcome AS candidate_outcome,
       count(*) AS pairs
FROM pairs
GROUP BY stable.outcome, candidate.outcome
ORDER BY stable_outcome, candidate_outcome
