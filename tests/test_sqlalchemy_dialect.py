"""The `flight_lstm://` SQLAlchemy dialect (over ADBC) against a real server: what Superset and
pandas use to list tables with their types and to run SQL with the operators."""
import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import registry

registry.register("flight_lstm", "flight_lstm.sqlalchemy_dialect", "FlightLstmDialect")  # as the entry point does


@pytest.fixture
def engine(server):
    engine = sa.create_engine(server.replace("grpc://", "flight_lstm://"))
    yield engine
    engine.dispose()


def test_reflection_lists_schemas_tables_and_typed_columns(engine):
    inspector = sa.inspect(engine)
    assert "main" in inspector.get_schema_names()
    assert {"reviews", "sales"} <= set(inspector.get_table_names())
    columns = {c["name"]: c["type"] for c in inspector.get_columns("sales")}
    assert isinstance(columns["ts"], sa.DateTime) and isinstance(columns["amount"], sa.Float)
    assert isinstance(columns["store"], sa.String)
    assert not inspector.has_table("no_such_table")


def test_queries_with_operators_through_the_engine_and_pandas(engine):
    with engine.connect() as con:
        rows = con.execute(sa.text("SELECT id, sentiment(review) AS s FROM reviews ORDER BY id")).fetchall()
    assert rows and all(r.s is None or -1 <= r.s <= 1 for r in rows)
    table = sa.Table("sales", sa.MetaData(), autoload_with=engine)
    frame = pd.read_sql(sa.select(table.c.store, sa.func.count()).group_by(table.c.store).order_by(table.c.store),
                        engine)
    assert list(frame["store"]) == ["a", "b", "c"]


def test_a_view_qualified_as_sqlalchemy_writes_it_answers(server):
    engine = sa.create_engine(server.replace("grpc://", "flight_lstm://"))
    with engine.connect() as con:
        rows = con.execute(sa.text("SELECT main.scored.id FROM main.scored ORDER BY 1")).fetchall()
    engine.dispose()
    assert rows and rows[0][0] == 0
