-- Sentiment of every review, next to its row
SELECT id, review, sentiment(review) AS score, sentiment_label(review) AS label
FROM reviews
ORDER BY id;

-- The same through the published view (served with --view review_scores="...")
SELECT label, count(*) AS reviews, round(avg(score), 3) AS mean_score
FROM review_scores
WHERE label IS NOT NULL
GROUP BY label
ORDER BY label;

-- Next 24 hours for every store: one batched model call for all series
SELECT store, list_transform(forecast(list(amount ORDER BY ts), 24), x -> round(x, 1)) AS next_24h
FROM sales
GROUP BY store
ORDER BY store;

-- Long form: one row per store and future hour, with timestamps and a 95% interval
SELECT store, ts, step, round(mean, 1) AS mean, round(lo, 1) AS lo, round(hi, 1) AS hi, forecast_origin
FROM forecast_table('sales', key => 'store', ts => 'ts', value => 'amount', horizon => 3, level => 0.95)
ORDER BY store, step;

-- The list form unnested by hand: a 90% interval per step
SELECT store, f.step, round(f.mean, 1) AS mean, round(f.lo, 1) AS lo, round(f.hi, 1) AS hi
FROM (
    SELECT store, unnest(forecast_interval(list(amount ORDER BY ts), 6, 0.9)) AS f
    FROM sales
    GROUP BY store
)
ORDER BY store, f.step;

-- Anomalies: every hour of every store judged from its own past; the flagged hours, worst first
SELECT store, ts, round(value, 1) AS value, round(expected, 1) AS expected, round(score, 6) AS score
FROM anomaly_table('sales', key => 'store', ts => 'ts', value => 'amount')
WHERE is_anomaly
ORDER BY score DESC
LIMIT 8;

-- The same as incidents a person can act on: flagged hours that follow each other, grouped
SELECT store, start_ts, end_ts, points, round(peak_score, 6) AS peak_score
FROM anomaly_events('sales', key => 'store', ts => 'ts', value => 'amount')
ORDER BY start_ts;
