-- Every count and sum the report's figures are computed from (weightshift/shadow/stats.py).
SELECT
  count(*) AS pairs,
  min("time") AS first_time,
  max("time") AS last_time,
  count_if(request_id IS NULL OR stable IS NULL OR candidate IS NULL) AS unreadable,
  count_if(stable.output_text IS NOT NULL AND candidate.output_text IS NOT NULL) AS text_pairs,
  -- exact match: both colours answered with a text, and the texts' hashes are equal
  count_if(stable.output_hash IS NOT NULL AND candidate.output_hash IS NOT NULL) AS compared,
  count_if(stable.output_hash = candidate.output_hash) AS same_output,
  -- refusals and safety blocks, on the requests both colours answered
  count_if(answered) AS answered,
  count_if(answered AND stable.refusal AND candidate.refusal) AS refusal_both,
  count_if(answered AND stable.refusal AND NOT candidate.refusal) AS refusal_stable_only,
  count_if(answered AND candidate.refusal AND NOT stable.refusal) AS refusal_candidate_only,
  count_if(answered AND stable.outcome = 'blocked' AND candidate.outcome = 'blocked') AS blocked_both,
  count_if(answered AND stable.outcome = 'blocked' AND candidate.outcome <> 'blocked')
    AS blocked_stable_only,
  count_if(answered AND candidate.outcome = 'blocked' AND stable.outcome <> 'blocked')
    AS blocked_candidate_only,
  -- mirror losses: copies the candidate never answered in time, or at all
  count_if(candidate.outcome = 'dropped') AS candidate_dropped,
  count_if(candidate.outcome = 'timeout') AS candidate_timeout,
  count_if(candidate.outcome = 'error') AS candidate_error,
  count_if(candidate.status IS NULL) AS candidate_no_answer,
  count_if(candidate_version IS NULL) AS candidate_version_unknown,
  -- how many latency and time-to-first-token values each colour has, for the quantiles
  count_if(both_ok AND stable.latency_ms IS NOT NULL) AS stable_latency_ms_n,
  count_if(both_ok AND candidate.latency_ms IS NOT NULL) AS candidate_latency_ms_n,
  count_if(both_ok AND stable.ttft_ms IS NOT NULL) AS stable_ttft_ms_n,
  count_if(both_ok AND candidate.ttft_ms IS NOT NULL) AS candidate_ttft_ms_n,
  -- answer tokens, on the pairs both colours answered ok with a known count (tokens_pair)
  count_if(tokens_pair) AS token_pairs,
  sum(IF(tokens_pair, CAST(stable.tokens_out AS double))) AS token_x,
  sum(IF(tokens_pair, CAST(candidate.tokens_out AS double))) AS token_y,
  sum(IF(tokens_pair, CAST(stable.tokens_out AS double) * stable.tokens_out)) AS token_xx,
  sum(IF(tokens_pair, CAST(candidate.tokens_out AS double) * candidate.tokens_out)) AS token_yy,
  sum(IF(tokens_pair, CAST(stable.tokens_out AS double) * candidate.tokens_out)) AS token_xy,
  -- answer length in characters, on the pairs both answered ok that keep both texts
  count_if(text_pair) AS length_pairs,
  sum(IF(text_pair, CAST(length(stable.output_text) AS double))) AS length_x,
  sum(IF(text_pair, CAST(length(candidate.output_text) AS double))) AS length_y,
  sum(IF(text_pair, CAST(length(stable.output_text) AS double) * length(stable.output_text)))
    AS length_xx,
  sum(IF(text_pair,
         CAST(length(candidate.output_text) AS double) * length(candidate.output_text)))
    AS length_yy,
  sum(IF(text_pair, CAST(length(stable.output_text) AS double) * length(candidate.output_text)))
    AS length_xy
FROM (
  SELECT *,
         both_ok AND stable.tokens_out IS NOT NULL AND candidate.tokens_out IS NOT NULL
           AS tokens_pair,
         both_ok AND stable.output_text IS NOT NULL AND candidate.output_text IS NOT NULL
           AS text_pair
  FROM pairs
) AS p
