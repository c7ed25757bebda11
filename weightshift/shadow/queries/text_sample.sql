-- A sample of the pairs that keep both texts, for the text measures (computed locally):
-- ordered by a hash of the request id, so the sample is the same on every run and engine.
SELECT request_id, "time", prompt_text,
       stable.outcome AS stable_outcome, candidate.outcome AS candidate_outcome,
       stable.refusal AS stable_refusal, candidate.refusal AS candidate_refusal,
       stable.latency_ms AS stable_latency_ms, candidate.latency_ms AS candidate_latency_ms,
       stable.tokens_out AS stable_tokens_out, candidate.tokens_out AS candidate_tokens_out,
       stable.output_text AS stable_output_text, candidate.output_text AS candidate_output_text
FROM pairs
WHERE stable.output_text IS NOT NULL AND candidate.output_text IS NOT NULL
ORDER BY to_hex(md5(to_utf8(request_id))), request_id
LIMIT :limit
