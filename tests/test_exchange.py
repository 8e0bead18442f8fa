"""DoExchange: the client streams its own batches and gets each back with predictions, batch for batch."""
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import exchanged
from flight_lstm.server import flight_sql_messages as messages
from flight_lstm.service import Service
from flight_lstm.sources.duckdb import DuckDBSource
from udfs import sentiment

SCHEMA = pa.schema([("id", pa.int64()), ("review", pa.string())])
BATCHES = [["a wonderful , moving film", None, "dull and far too long"], ["", "🎬"], [], ["awful"] * 5]


def batch(texts, start=0) -> pa.RecordBatch:
    return pa.record_batch([pa.array(range(start, start + len(texts)), pa.int64()), pa.array(texts, pa.string())],
                           schema=SCHEMA)


def exchange(client, sql):
    return client.do_exchange(flight.FlightDescriptor.for_command(sql))


def test_batches_come_back_one_for_one_in_order_with_predictions(client):
    writer, reader = exchange(client, "SELECT *, sentiment(review) AS s, sentiment_label(review) AS l FROM input")
    writer.begin(SCHEMA)
    for i, texts in enumerate(BATCHES):
        writer.write_batch(batch(texts, start=10 * i))
        got = reader.read_chunk().data  # the reply arrives before the next batch is sent
        assert got.schema.names == ["id", "review", "s", "l"] and got.num_rows == len(texts)
        assert got.column("id").to_pylist() == list(range(10 * i, 10 * i + len(texts)))
        assert got.column("review").to_pylist() == texts
        assert got.column("s").to_pylist() == pytest.approx(sentiment(pa.array(texts, pa.string())).to_pylist())
    writer.done_writing()
    with pytest.raises(StopIteration):
        reader.read_chunk()
    writer.close()


def test_a_filter_keeps_one_reply_per_batch(client):
    writer, reader = exchange(client, "SELECT id, sentiment(review) AS s FROM input WHERE review IS NOT NULL")
    writer.begin(SCHEMA)
    for texts in ([None, None], ["good", None, "bad"]):
        writer.write_batch(batch(texts))
    writer.done_writing()
    sizes = [chunk.data.num_rows for chunk in reader]
    writer.close()
    assert sizes == [0, 2]


def test_no_batches_gives_the_schema_and_no_rows(client):
    writer, reader = exchange(client, "SELECT review, sentiment(review) AS s FROM input")
    writer.begin(SCHEMA)
    writer.done_writing()
    table = reader.read_all()
    writer.close()
    assert table.num_rows == 0 and table.schema.names == ["review", "s"]


@pytest.mark.parametrize("sql, words", [
    ("SELECT forecast([1.0, 2.0], 2) AS f FROM input", "forecast"),
    ("SELECT forecast_interval([1.0], 2, 0.9) AS f FROM input", "forecast_interval"),
    ("SELECT count(*) FROM input", "aggregate"),
    ("SELECT histogram(review) FROM input", "whole input"),  # unknown to the planner; DuckDB's plan tells
    ("SELECT * FROM input ORDER BY id", "ORDER BY"),
    ("SELECT * FROM input a JOIN input b USING (id)", "join"),
    ("SELECT id, row_number() OVER () FROM input", "window"),
    ("SELECT * FROM reviews", "input"),
    ("SELECT *, (SELECT max(id) FROM input) FROM input", "subquery"),
    ("SELEC 1", "syntax error"),
])
def test_queries_needing_more_than_a_batch_are_refused(client, sql, words):
    writer, reader = exchange(client, sql)
    with pytest.raises(pa.ArrowInvalid, match=words) as caught:
        try:
            writer.begin(SCHEMA)
            writer.write_batch(batch(["good"]))
            writer.done_writing()
            reader.read_all()
        finally:
            writer.close()  # raises the same error again
    assert "Traceback" not in str(caught.value)


def test_writes_and_other_descriptors_are_refused(client):
    writer, reader = exchange(client, "DELETE FROM input")
    with pytest.raises(flight.FlightUnauthorizedError, match="read-only"):
        writer.begin(SCHEMA)
        writer.done_writing()
        reader.read_all()
    for descriptor in [flight.FlightDescriptor.for_path("reviews"),
                       flight.FlightDescriptor.for_command(messages.pack(messages.CommandStatementQuery(query="SELECT 1")))]:
        writer, reader = client.do_exchange(descriptor)
        with pytest.raises(pa.ArrowInvalid, match="DoExchange takes"):
            writer.begin(SCHEMA)
            writer.done_writing()
            reader.read_all()


def test_service_exchange_is_a_plain_function(lake):
    service = Service(DuckDBSource(lake))
    schema, out = service.exchange("SELECT upper(review) AS r, sentiment(review) IS NULL AS missing FROM input",
                                   SCHEMA, iter([batch(["ok", None]), batch(["x"])]))
    assert [b.to_pylist() for b in out] == [[{"r": "OK", "missing": False}, {"r": None, "missing": True}],
                                            [{"r": "X", "missing": False}]]
    assert schema.names == ["r", "missing"]



def test_an_exchange_is_bounded_knowing_the_types_the_client_sent(client):
    """The client chooses the input's types, and an exchange's query was never sized: 4,096 columns
    copied by 64 stars (a 250-byte query) bound for 65 s. Its columns now count as sent, and its
    result may hold 8,192 leaves: two copies plan, three are refused at once; the server serves on."""
    wide = pa.RecordBatch.from_arrays([pa.array([i]) for i in range(4096)], [f"c{i}" for i in range(4096)])
    assert exchanged(client, "SELECT *, * FROM input", wide).num_columns == 8192
    with pytest.raises(pa.ArrowInvalid, match="may make at most 8,192 columns") as caught:
        exchanged(client, "SELECT *, *, * FROM input", wide)
    assert "Traceback" not in str(caught.value)
    assert exchanged(client, "SELECT id FROM input", batch(["x"])).column("id").to_pylist() == [0]


def test_a_name_given_twice_comes_back_as_the_schema_announced(client):
    """DuckDB's schema renames a name given twice (`id_1`), its result did not, and the stream failed
    with INTERNAL on the first batch."""
    got = exchanged(client, "SELECT id, id, *, review AS id FROM input", batch(["x"]))
    assert got.schema.names == ["id", "id_1", "id_2", "review", "id_3"]
    assert got.to_pylist() == [{"id": 0, "id_1": 0, "id_2": 0, "review": "x", "id_3": "x"}]
