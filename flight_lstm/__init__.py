"""flight-lstm: LSTM sentiment and forecasting as SQL operators over Arrow Flight."""

import os

__version__ = "0.1.0"

# DuckDB's allocator (its own jemalloc) keeps the address space of freed memory mapped for good.
# Under the server's cap on that space (engine/limits.py: cap_memory), one large query then left
# too little of it for anything else, for the rest of the process's life. jemalloc reads this when
# DuckDB first allocates, so it is set here, before anything imports duckdb. Freed pages are also
# handed back at once (muzzy_decay_ms:0): kept "muzzy", they still counted as resident. After four
# cancelled 72 MB queries the server read up to 771 MB resident in 13 runs without it, 738 MB in 13
# with it (tests/test_faults.py allows 144 MB above the first round's ~612 MB).
os.environ.setdefault("DUCKDB_JE_MALLOC_CONF", "retain:false,muzzy_decay_ms:0")
