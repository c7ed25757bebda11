-- Latency and time to first token of both colours, one row per value, on the pairs both
-- colours answered ok (the same requests on both sides).
SELECT 'stable' AS colour, 'latency_ms' AS measure, stable.latency_ms AS x FROM pairs WHERE both_ok
UNION ALL
SELECT 'candidate', 'latency_ms', candidate.latency_ms FROM pairs WHERE both_ok
UNION ALL
SELECT 'stable', 'ttft_ms', stable.ttft_ms FROM pairs WHERE both_ok
UNION ALL
SELECT 'candidate', 'ttft_ms', candidate.ttft_ms FROM pairs WHERE both_ok
