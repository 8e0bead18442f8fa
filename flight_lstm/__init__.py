"""flight-lstm: LSTM sentiment and forecasting as SQL operators over Arrow Flight."""

import os

__version__ = "0.1.0"

# DuckDB's allocator (its own jemalloc) keeps the address space of freed memory mapped for good.
# Under the server's cap on that space (engine/limits.py: cap_memory), one large query then left
# too little of it for anything else, for the rest of the process's life. jemalloc reads this when
# DuckDB first allocates, so it is set here, before anything imports duckdb.
os.environ.setdefault("DUCKDB_JE_MALLOC_CONF", "retain:false")
