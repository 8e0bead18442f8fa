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
