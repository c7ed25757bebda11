-- Divergence over time, hour by hour (UTC).
SELECT substr("time", 1, 13) AS hour,
       count(*) AS pairs,
       count_if(stable.output_hash IS NOT NULL AND candidate.output_hash IS NOT NULL) AS compared,
       count_if(stable.output_hash = candidate.output_hash) AS same_output,
       count_if(answered) AS answered,
       count_if(answered AND stable.refusal) AS stable_refusals,
       count_if(answered AND candidate.refusal) AS candidate_refusals,
       count_if(candidate.status IS NULL) AS candidate_no_answer
FROM pairs
GROUP BY 1
ORDER BY 1
