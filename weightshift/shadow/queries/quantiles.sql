-- Six order statistics of one colour's latency or time to first token: each quantile and
-- the two ranks that bound it (fractions computed in weightshift/shadow/stats.py).
SELECT count(x) AS n,
       approx_percentile(x, :f1) AS v1,
       approx_percentile(x, :f2) AS v2,
       approx_percentile(x, :f3) AS v3,
       approx_percentile(x, :f4) AS v4,
       approx_percentile(x, :f5) AS v5,
       approx_percentile(x, :f6) AS v6
FROM answers
WHERE colour = :colour AND measure = :measure AND x IS NOT NULL
