"""Predictions into a pandas or polars DataFrame, over ADBC: Arrow all the way, no row conversion.

    pip install adbc-driver-flightsql pandas    # and/or polars
    python examples/pandas_polars.py --server grpc://127.0.0.1:8815

Neither library is a flight-lstm dependency; the example uses whichever is installed.
"""
import argparse
import importlib.util
import warnings

import adbc_driver_flightsql.dbapi as flight_sql

warnings.filterwarnings("ignore", message="Cannot disable autocommit")

SQL = "SELECT id, review, sentiment(review) AS score, sentiment_label(review) AS label FROM reviews"


def main(server: str) -> None:
    found = [name for name in ("pandas", "polars") if importlib.util.find_spec(name)]
    if not found:
        raise SystemExit("install pandas or polars to run this example (pip install pandas)")
    with flight_sql.connect(server) as conn, conn.cursor() as cur:
        if "pandas" in found:
            cur.execute(SQL)
            frame = cur.fetch_df()
            print(frame.groupby("label")["score"].describe())
        if "polars" in found:
            import polars as pl

            cur.execute(SQL)
            frame = pl.from_arrow(cur.fetch_arrow_table())
            print(frame.group_by("label").agg(pl.col("score").mean(), pl.len()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="grpc://127.0.0.1:8815")
    main(parser.parse_args().server)
