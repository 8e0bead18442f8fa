"""flight-lstm from an off-the-shelf Flight SQL client: the ADBC driver, through DB-API.

    pip install adbc-driver-flightsql
    python examples/adbc_client.py --server grpc://127.0.0.1:8815

The same SQL as a plain Flight client, plus bound parameters and the catalog listings
that BI tools read.
"""
import argparse
import warnings

import adbc_driver_flightsql.dbapi as flight_sql

# flight-lstm is read-only, so it has no transactions to turn autocommit off for.
warnings.filterwarnings("ignore", message="Cannot disable autocommit")


def main(server: str, user: str | None, password: str | None) -> None:
    kwargs = {"db_kwargs": {"username": user, "password": password}} if user else {}
    with flight_sql.connect(server, **kwargs) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, review, sentiment(review) AS score, sentiment_label(review) AS label "
                    "FROM reviews WHERE id < ? ORDER BY id", (5,))
        print(cur.fetch_arrow_table().to_pylist())

        cur.execute("SELECT store, forecast(list(amount ORDER BY ts), 24) AS next_24h FROM sales GROUP BY store")
        for store, next_24h in cur.fetchall():
            print(store, [round(v, 1) for v in next_24h[:6]], "...")

        print(conn.adbc_get_info()["vendor_name"], conn.adbc_get_table_types())
        for catalog in conn.adbc_get_objects(depth="tables").read_all().to_pylist():
            for schema in catalog["catalog_db_schemas"]:
                print(schema["db_schema_name"], [t["table_name"] for t in schema["db_schema_tables"]])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="grpc://127.0.0.1:8815")
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    main(args.server, args.user, args.password)
