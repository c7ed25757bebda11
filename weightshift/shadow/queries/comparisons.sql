-- Which comparisons (stable bundle, candidate bundle) the window holds, most pairs first.
SELECT stable_version, candidate_version, count(*) AS pairs,
       min("time") AS first_time, max("time") AS last_time
FROM in_window
GROUP BY stable_version, candidate_version
ORDER BY pairs DESC, stable_version, candidate_version
