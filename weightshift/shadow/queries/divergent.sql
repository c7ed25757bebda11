-- The pairs that differ most, by what hashes and figures can tell: a different outcome
-- first, then a refusal on one side only, then a different answer, by how far the answer
-- lengths (tokens) are apart.
SELECT request_id, "time", prompt_hash, prompt_text,
       stable.outcome AS stable_outcome, candidate.outcome AS candidate_outcome,
       stable.status AS stable_status, candidate.status AS candidate_status,
       stable.refusal AS stable_refusal, candidate.refusal AS candidate_refusal,
       stable.latency_ms AS stable_latency_ms, candidate.latency_ms AS candidate_latency_ms,
       stable.tokens_out AS stable_tokens_out, candidate.tokens_out AS candidate_tokens_out,
       stable.output_hash AS stable_output_hash, candidate.output_hash AS candidate_output_hash,
       stable.output_text AS stable_output_text, candidate.output_text AS candidate_output_text
FROM pairs
WHERE stable.outcome <> candidate.outcome
   OR stable.refusal <> candidate.refusal
   OR stable.output_hash <> candidate.output_hash
ORDER BY IF(stable.outcome <> candidate.outcome, 4, 0)
           + IF(stable.refusal <> candidate.refusal, 2, 0)
           + IF(stable.output_hash <> candidate.output_hash, 1, 0) DESC,
         abs(ln(coalesce(candidate.tokens_out, 0) + 1.0) - ln(coalesce(stable.tokens_out, 0) + 1.0)) DESC,
         request_id
LIMIT :limit
