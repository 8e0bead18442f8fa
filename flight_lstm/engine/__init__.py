"""Execution: the engine that runs plans, and the limits it runs them within. The rest of the
tree uses only these names; the modules behind them are the engine's own.

    engine.py    Engine: schema, stream, collect, exchange, query slots
    database.py  the locked-down DuckDB, operator registration, checked_sql (the one door)
    running.py   a query in flight: cursor, result, budget, slot
    watchdog.py  stops queries that are cancelled, out of time or idle
    limits.py    Limits, slots (Admission), a query's Budget, the process memory cap
    lift.py      lifted operator calls applied to whole batches
    exchange.py  a row-wise plan over a client's own batches (DoExchange)
    errors.py    DuckDB's errors as ours
"""
from flight_lstm.engine.engine import BATCH_ROWS, Engine
from flight_lstm.engine.limits import Limits, cap_memory

__all__ = ["BATCH_ROWS", "Engine", "Limits", "cap_memory"]
