"""Train a new model version on the user's own lakehouse data, read through the same read-only
planner and source as any query, and register it where the server will find it by name."""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flight_lstm.errors import InvalidQuery
from flight_lstm.models import train_forecast, train_sentiment
from flight_lstm.models.registry import Registry, user_models_dir
from flight_lstm.service import Service
from flight_lstm.sources import open_source
from udfs.base import registry


def read_query(service: Service, sql: str) -> pa.Table:
    schema, batches = service.stream(service.plan(sql))
    return pa.Table.from_batches(list(batches), schema)


def series_from_table(table: pa.Table) -> list[np.ndarray]:
    """(series id, ts, value) rows → one array per series in time order."""
    if table.num_columns != 3:
        raise InvalidQuery(f"forecast training data needs 3 columns (series id, ts, value), got {table.column_names}")
    key, ts, value = table.column_names
    table = table.filter(pc.is_valid(table[ts])).sort_by([(key, "ascending"), (ts, "ascending")])
    ids = table[key].combine_chunks()
    if len(ids) == 0:
        raise InvalidQuery("the training query returned no rows")
    starts = np.flatnonzero(pc.not_equal(ids[1:], ids[:-1]).fill_null(True).to_numpy(zero_copy_only=False)) + 1
    values = pc.cast(table[value], pa.float64()).to_numpy().astype(np.float64)
    return np.split(values, starts)


def texts_and_labels(table: pa.Table) -> tuple[pa.Array, np.ndarray]:
    """(text, label) rows with label 0/1 or boolean; rows with a NULL are left out."""
    if table.num_columns != 2:
        raise InvalidQuery(f"sentiment training data needs 2 columns (text, label), got {table.column_names}")
    text, label = table.column_names
    table = table.filter(pc.and_(pc.is_valid(table[text]), pc.is_valid(table[label])))
    labels = pc.cast(table[label], pa.int64()).to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise InvalidQuery("sentiment labels must be 0/1 or boolean")
    return table[text].combine_chunks().cast(pa.string()), labels


def next_version(name: str, out_dir: Path) -> str:
    """One past the highest version of `name` in the target directory or anywhere the server looks."""
    cards = Registry([out_dir]).cards() + registry().cards()
    versions = [int(c.version) for c in cards if c.name == name and c.version.isdigit()]
    return str(max(versions, default=0) + 1)


def train_from_source(kind: str, source_uri: str, sql: str, name: str, *, out_dir: Path | None = None,
                      seed: int = 0, epochs: int | None = None, **hparams):
    service = Service(open_source(source_uri))
    table = read_query(service, sql)
    # The card records the source by its secret-free description, never the URI.
    command = shlex.join(["flight-lstm", "train", kind, "--source", service.source.describe(), "--sql", sql, "--name", name])
    out_dir = Path(out_dir or user_models_dir())
    options = {"seed": seed, "name": name, "version": next_version(name, out_dir), "out_dir": out_dir,
               "command": command, **({"epochs": epochs} if epochs else {}), **hparams}
    if kind == "forecast":
        return train_forecast(series_from_table(table), **options)
    texts, labels = texts_and_labels(table)
    return train_sentiment(texts, labels, **options)
