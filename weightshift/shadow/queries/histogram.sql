-- Latency and time to first token on a log scale (ten buckets per factor e), for the plots.
SELECT colour, measure, CAST(floor(ln(greatest(x, 0.01)) * 10) AS integer) AS bucket,
       count(*) AS n
FROM answers
WHERE x IS NOT NULL
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
