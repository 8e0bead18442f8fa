"""The command line: argument parsing and printing; the work lives in the modules it calls."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from flight_lstm import threads
from flight_lstm.engine import BATCH_ROWS, Limits, cap_memory
from flight_lstm.engine.limits import parse_size

THREADS_HELP = ("CPUs to use: DuckDB gets N threads, torch N-1 (at least 1), so one busy core does not stall "
                "torch (default: the CPUs this process may run on, from its affinity and cgroup CPU quota)")
OUTPUTS = (".parquet", ".csv", ".json")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return args.run(args) or 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flight-lstm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flight-lstm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve SQL with LSTM operators over Arrow Flight")
    serve.add_argument("--source", required=True, help="duckdb:///abs/path/lake.db")
    serve.add_argument("--allow-missing", action="store_true",
                       help="start even if the source cannot be opened yet (a DuckDB file still to be written, "
                            "Dremio still starting); queries get UNAVAILABLE until it opens")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8815)
    serve.add_argument("--view", action="append", default=[], metavar='NAME="SQL"',
                       help="publish a query as a named dataset (repeatable)")
    serve.add_argument("--batch-rows", type=int, default=BATCH_ROWS, help="rows per streamed batch")
    serve.add_argument("--keep-attached", type=float, default=0.5, metavar="SECONDS",
                       help="a DuckDB source file stays attached this long after the last query, so the next "
                            "one skips a cold attach; a writer waits for a pause this long (0: let go at once)")
    serve.add_argument("--memory-limit", help="DuckDB's memory for the server, e.g. 4GB (default: DuckDB's, 80%% of RAM); "
                       "a query past it gets UNAVAILABLE")
    serve.add_argument("--max-memory", metavar="SIZE",
                       help="cap on the whole process's memory (its data segment), behind --memory-limit: "
                            "an allocation past it fails that query with UNAVAILABLE (default: what the "
                            "server holds once started, plus --memory-limit, plus 1 GiB)")
    serve.add_argument("--max-spill", metavar="SIZE", default="4GB",
                       help="the most DuckDB may write to disk when queries outgrow --memory-limit, server-wide, in a "
                            "temporary directory of its own; a query past it gets UNAVAILABLE (default: 4GB)")
    serve.add_argument("--threads", type=int, metavar="N",
                       help="CPUs to use: DuckDB and torch get N threads each (default: the CPUs this process may run "
                            "on, from its affinity and cgroup CPU quota)")
    serve.add_argument("--auth-file", type=Path, help="users file (flight-lstm users add); turns auth on")
    serve.add_argument("--token-secret-file", type=Path,
                       help="key that signs bearer tokens; share it between replicas (default: random per start)")
    serve.add_argument("--tls-cert", type=Path, help="serve TLS only, with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    serve.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--grace-seconds", type=float, default=30.0,
                       help="on SIGTERM, how long in-flight queries may take to finish")
    serve.add_argument("--max-queries", type=int, default=Limits.max_queries,
                       help="queries running at once; more wait up to --queue-seconds, then get UNAVAILABLE")
    serve.add_argument("--queue-seconds", type=float, default=Limits.queue_seconds)
    serve.add_argument("--query-seconds", type=float, default=Limits.query_seconds,
                       help="a query's time limit, start to last batch (0: none); past it, DEADLINE_EXCEEDED")
    serve.add_argument("--idle-seconds", type=float, default=Limits.idle_seconds,
                       help="end a stream whose client neither reads nor sends for this long, freeing its slot")
    serve.add_argument("--max-rows", type=int, default=Limits.max_rows,
                       help="rows in one result (0: no limit); past it, the query ends with UNAVAILABLE")
    serve.add_argument("--max-calls", type=int, metavar="N",
                       help="Flight calls in flight at once, each holding a thread and its stack; more get "
                            "UNAVAILABLE at once (default: what a quarter of the memory room under --max-memory "
                            "pays for at a thread stack and 1 MiB each, from 16 to 256)")
    serve.add_argument("--max-calls-per-user", type=int, metavar="N",
                       help="calls in flight of one logged-in user, or of one client address without auth "
                            "(IPv6: its /64); more get UNAVAILABLE at once (default: a quarter of --max-calls)")
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on http://HOST:PORT/metrics")
    serve.add_argument("--log-level", default="INFO")
    serve.set_defaults(run=_serve)

    users = commands.add_parser("users", help="manage the users file for --auth-file")
    users.add_argument("action", choices=["add", "list", "remove"])
    users.add_argument("file", type=Path)
    users.add_argument("user", nargs="?", help="add and remove: the user")
    users.add_argument("--replace", action="store_true", help="add: give an existing user a new password")
    users.set_defaults(run=_users)

    query = commands.add_parser("query", help="run SQL on a server and print the result")
    query.add_argument("sql")
    query.add_argument("--server", default="grpc://127.0.0.1:8815")
    query.add_argument("--output", type=Path, help="write the result to a .parquet, .csv or .json file instead of printing")
    query.add_argument("--max-rows", type=int, default=40, help="rows to print")
    query.add_argument("--explain", action="store_true",
                       help="show how the query splits between the source and the local operators")
    query.add_argument("--user", help="log in as USER; the password comes from FLIGHT_LSTM_PASSWORD or a prompt")
    query.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) to trust for a grpc+tls:// server")
    query.set_defaults(run=_query)

    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("--json", action="store_true")
    models.set_defaults(run=_models)

    train = commands.add_parser("train", help="train a model: the shipped recipe, or on your own data")
    train.add_argument("kind", choices=["sentiment", "forecast", "anomaly"])
    data = train.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", type=Path, help="benchmark data: the shared data folder (or its sst2/, m4_hourly/ ... folder)")
    data.add_argument("--source", help="a source URI to read your own training data from, with --sql")
    train.add_argument("--sql", help="forecast: SELECT series_id, ts, value ...; sentiment: SELECT text, label ...")
    train.add_argument("--name", help="model name to register a new version under (with --source)")
    train.add_argument("--from", dest="parent", metavar="NAME[@VERSION]",
                       help="with --source: fine-tune this registered model (e.g. m4-hourly-lstm, sentiment-bilstm) instead "
                            "of training from scratch; the card compares the new version with it")
    train.add_argument("--out", type=Path, help="models directory to write into (default: your models directory)")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    train.add_argument("--json", action="store_true", help="print the new model's card as JSON (for scripts)")
    train.add_argument("--freq", default="hourly",
                       help="forecast with --data: which shipped forecaster to train (hourly, daily, business_daily, "
                            "weekly, monthly, quarterly, yearly)")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="benchmark scores of a model beside baselines")
    evaluate.add_argument("kind", choices=["sentiment", "forecast", "anomaly"])
    evaluate.add_argument("--data", type=Path, required=True,
                          help="the shared data folder; forecast scores every validation set found in it")
    evaluate.add_argument("--model", help="name or name@version (default: the shipped model; for forecast, "
                                          "the model of each set's frequency)")
    evaluate.add_argument("--sets", help="forecast: only the validation sets whose names contain one of these "
                                         "comma-separated words (e.g. hourly,tourism)")
    evaluate.add_argument("--no-theta", action="store_true",
                          help="forecast: leave out the Theta baseline (statsforecast) even when installed")
    evaluate.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    evaluate.set_defaults(run=_evaluate)

    backtest = commands.add_parser("backtest", help="how well the model would have done on your own data, "
                                                     "beside simple baselines")
    backtest.add_argument("kind", nargs="?", choices=["forecast", "sentiment"], default="forecast")
    backtest.add_argument("--source", required=True, help="duckdb:///abs/path/lake.db or dremio://...")
    backtest.add_argument("--sql", required=True, help="forecast: SELECT key, ts, value ... (or ts, value); "
                                                       "sentiment: SELECT text, label ... (0/1, true/false or "
                                                       "'negative'/'positive')")
    backtest.add_argument("--horizon", type=int, help="forecast: steps ahead each origin forecasts")
    backtest.add_argument("--origins", type=int, default=3, help="forecast: rolling origins, each a horizon earlier")
    backtest.add_argument("--level", type=float, default=0.95, help="forecast: the interval's level")
    backtest.add_argument("--model", help="name or name@version (default: the model of each series' frequency)")
    backtest.add_argument("--freq", help="forecast: the series' frequency, if not inferred from ts")
    backtest.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    backtest.set_defaults(run=_backtest)

    plot = commands.add_parser("plot", help="draw a forecast, a backtest or a series' anomalies to PNG or SVG")
    plot.add_argument("kind", choices=["forecast", "backtest", "anomalies"])
    plot.add_argument("--source", required=True, help="duckdb:///abs/path/lake.db or dremio://...")
    plot.add_argument("--table", required=True, help="the table (or view) holding the series")
    plot.add_argument("--key", help="the column naming each series (leave out for one series)")
    plot.add_argument("--ts", required=True)
    plot.add_argument("--value", required=True)
    plot.add_argument("--horizon", type=int, default=24, help="forecast and backtest: steps ahead")
    plot.add_argument("--origins", type=int, default=3, help="backtest: rolling origins, each a horizon earlier")
    plot.add_argument("--level", type=float, help="the interval's level (forecast 0.95, anomalies 0.999)")
    plot.add_argument("--history", type=int, help="points of each series to draw (forecast: 3 horizons; anomalies: 500)")
    plot.add_argument("--model", help="name or name@version")
    plot.add_argument("--panels", type=int, default=6, help="at most this many series, one panel each")
    plot.add_argument("--out", type=Path, required=True, help="a .png or .svg file")
    plot.set_defaults(run=_plot)

    enrich = commands.add_parser("enrich", help="write a query's rows to a target, incrementally, once or on a schedule")
    enrich.add_argument("--source", help="duckdb:///abs/path/lake.db or dremio://...")
    enrich.add_argument("--sql", help='e.g. "SELECT id, sentiment(review) AS sentiment FROM reviews"')
    enrich.add_argument("--key", help="the column(s) naming a row: id or a,b")
    enrich.add_argument("--into", help="TABLE (in the DuckDB source), parquet:///abs/dir, "
                                       "iceberg:///abs/warehouse/namespace.table or dremio:space.folder.table")
    when = enrich.add_mutually_exclusive_group()
    when.add_argument("--every", help="run again at this interval: 30s, 15m, 1h, 1d")
    when.add_argument("--cron", help='run at these times: "*/15 * * * *"')
    enrich.add_argument("--watermark", help="re-score rows whose value in this column grew since they were written")
    enrich.add_argument("--rescore-on-model-change", action="store_true", default=None,
                        help="re-score rows written by another model than the current one")
    enrich.add_argument("--chunk-rows", type=int, help="rows per atomic commit (default 10,000)")
    enrich.add_argument("--engine", choices=["local", "ray"],
                        help="score here (local, the default) or on a Ray cluster (into parquet:// or iceberg://)")
    enrich.add_argument("--ray-address", help="with --engine ray: the cluster to join, e.g. auto "
                                              "(default: start one on this machine)")
    enrich.add_argument("--ray-workers", type=int, help="with --engine ray: scoring actors (default: one per CPU)")
    enrich.add_argument("--jobs", type=Path, help="a TOML file of named jobs (instead of the options above)")
    enrich.add_argument("--job", help="with --jobs: run only this job")
    enrich.add_argument("--once", action="store_true", help="run once even if a schedule is given")
    enrich.add_argument("--wait", action="store_true", help="wait for another run on the same target instead of exiting")
    enrich.add_argument("--dry-run", action="store_true", help="print the plan and the incremental filter; write nothing")
    enrich.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    enrich.add_argument("--log-level", default="INFO")
    enrich.set_defaults(run=_enrich)
    return parser


def _serve(args) -> int:
    from flight_lstm.service import Service
    from flight_lstm.sources import open_source

    plan = _size_threads(args.threads, spare=False)  # a server: torch gets every CPU (flight_lstm/threads.py)
    views = dict(_split_view(v) for v in args.view)
    limits = Limits(max_queries=args.max_queries, queue_seconds=args.queue_seconds,
                    query_seconds=args.query_seconds or None, max_rows=args.max_rows or None,
                    idle_seconds=args.idle_seconds)
    if args.keep_attached < 0:
        raise SystemExit("--keep-attached is seconds: 0 or more")
    for name in ("max_calls", "max_calls_per_user"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be at least 1")
    try:
        source = open_source(args.source, keep_attached=args.keep_attached)
    except ValueError as e:
        raise SystemExit(f"error: --source: {e}") from None
    try:
        parse_size(args.max_spill)
    except ValueError as e:
        raise SystemExit(f"error: --max-spill: {e}") from None
    service = Service(source, views=views, batch_rows=args.batch_rows,
                      memory_limit=args.memory_limit, threads=plan.duckdb, limits=limits, max_spill=args.max_spill)
    try:  # however serving ends, even before it starts, the service lets go (its spill directory too)
        return _serve_with(service, args)
    finally:
        service.close()


def _serve_with(service, args) -> int:
    import pyarrow as pa

    from flight_lstm.server import FlightLSTMServer

    _check_start(service, args)
    try:
        service.warm_up()
    except Exception as e:  # a server that cannot score must not start half-working
        raise SystemExit(f"error: the models failed to load: {e}") from None
    try:
        cap_memory(args.memory_limit, args.max_memory)
    except ValueError as e:
        raise SystemExit(f"error: --max-memory: {e}") from None
    options, scheme = _security(args)
    options.update(max_calls=args.max_calls, max_calls_per_user=args.max_calls_per_user)
    try:
        server = FlightLSTMServer(service, f"{scheme}://{args.host}:{args.port}", **options)
    except (pa.ArrowException, OSError) as e:  # the port was taken since the check, or gRPC refused the address
        raise SystemExit(f"error: cannot serve on {args.host}:{args.port}: {e}") from None
    signal.signal(signal.SIGTERM, lambda *_: _drain(server, args.grace_seconds))
    logging.getLogger("flight_lstm.server").info(
        "calls in flight: at most %d, %d per user (or per address without auth)", server.calls.max_calls,
        server.calls.per_user)
    print(f"flight-lstm serving {service.source.describe()} on {scheme}://{args.host}:{server.port}", flush=True)
    if args.metrics_port is not None:
        from flight_lstm.server.telemetry import serve_metrics

        port = serve_metrics(args.host, args.metrics_port)
        print(f"flight-lstm metrics on http://{args.host}:{port}/metrics", flush=True)
    server.serve()
    return 0


def _size_threads(cpus: int | None, spare: bool = True) -> threads.Threads:
    try:
        return threads.size(cpus, spare)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _check_start(service, args) -> None:
    """What a server can know before it says it is serving: the source opens, every view plans,
    the port is free. Each failure is one line and a non-zero exit."""
    from flight_lstm.errors import FlightLSTMError

    try:
        service.source.tables()
    except FlightLSTMError as e:
        if not args.allow_missing:
            raise SystemExit(f"error: the source cannot be opened: {e}. Check --source, or pass --allow-missing "
                             "if it will appear later") from None
        logging.getLogger("flight_lstm.cli").warning("the source cannot be opened yet (%s); serving anyway "
                                                     "(--allow-missing)", e)
    else:
        for name in service.view_sql:
            try:
                service.dataset_schema(name, "VIEW")
            except FlightLSTMError as e:
                raise SystemExit(f"error: --view {name}: {e}") from None
    _check_port(args.host, args.port)


def _check_port(host: str, port: int) -> None:
    """Bind the address once, as gRPC will: a port another server holds (even one that shares
    ports, as gRPC does) fails here in one line, not inside gRPC."""
    import errno
    import socket

    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                              flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise SystemExit(f"error: --host {host}: {e.strerror}") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise SystemExit(f"error: port {port} on {host} is in use by another program: stop it or "
                                 "choose another --port") from None
            raise SystemExit(f"error: cannot listen on {host}:{port}: {e.strerror}") from None


def _drain(server, grace_seconds: float) -> None:
    """SIGTERM: stop taking calls and let in-flight ones finish, for at most the grace period."""
    def stop():
        timer = threading.Timer(grace_seconds, lambda: os._exit(0))
        timer.daemon = True
        timer.start()
        server.shutdown()

    threading.Thread(target=stop, daemon=True).start()


def _security(args) -> tuple[dict, str]:
    """Auth and TLS options for the server, and the URI scheme it listens on."""
    from flight_lstm.server.auth import BasicBearerAuth, Tokens, Users

    options: dict = {}
    if args.auth_file:
        if not args.auth_file.exists():
            raise SystemExit(f"no users file at {args.auth_file}: create it with flight-lstm users add")
        secret = args.token_secret_file.read_bytes().strip() if args.token_secret_file else None
        options["auth"] = BasicBearerAuth(Users(args.auth_file), Tokens(secret))
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
    if not args.tls_cert:
        return options, "grpc"
    import pyarrow.flight as flight

    options["tls_certificates"] = [flight.CertKeyPair(args.tls_cert.read_bytes(), args.tls_key.read_bytes())]
    if args.tls_client_ca:
        options.update(verify_client=True, root_certificates=args.tls_client_ca.read_bytes())
    return options, "grpc+tls"


def _users(args) -> int:
    from getpass import getpass

    from flight_lstm.server.auth import Users

    users = Users(args.file)
    if args.action == "list":
        print("\n".join(users.names()) or f"no users in {args.file}")
        return 0
    if not args.user:
        raise SystemExit(f"error: users {args.action} needs the user's name")
    try:
        if args.action == "remove":
            users.remove(args.user)
            print(f"removed {args.user} from {args.file}; their tokens no longer work")
            return 0
        if args.user in users.load() and not args.replace:  # before asking for a password
            raise ValueError(f"user {args.user!r} exists already: pass --replace to give them a new password")
        password = getpass() if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        users.add(args.user, password, replace=args.replace)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{'new password for' if args.replace else 'added'} {args.user} in {args.file}")
    return 0


def _split_view(text: str) -> tuple[str, str]:
    name, sep, sql = text.partition("=")
    if not sep or not name.strip() or not sql.strip():
        raise SystemExit(f'--view takes NAME="SQL", got {text!r}')
    return name.strip(), sql.strip()


def _query(args) -> int:
    from getpass import getpass

    import duckdb
    import pyarrow as pa

    # gRPC's own log lines (abseil's, a failed TLS handshake) say less than the error below; they
    # are read when gRPC starts, at the first connection. GRPC_VERBOSITY=INFO brings them back.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from flight_lstm.client import action, connect, connection_hint, query, short_message

    if args.output and args.output.suffix.lower() not in OUTPUTS:
        raise SystemExit(f"error: --output {args.output}: write a {', '.join(OUTPUTS)} file")
    tls_ca = _tls_ca(args.tls_ca)
    password = None
    if args.user:
        password = os.environ.get("FLIGHT_LSTM_PASSWORD")
        if not password and not sys.stdin.isatty():
            raise SystemExit(f"error: --user {args.user} needs a password: set FLIGHT_LSTM_PASSWORD, or run "
                             "in a terminal to be asked")
        password = password or getpass(f"password for {args.user}: ")
    try:  # the client closed before the interpreter ends: gRPC's threads torn down at exit had crashed it
        with connect(args.server, args.user, password, tls_ca) as client:
            if args.explain:
                print(json.dumps(action(client, "explain", args.sql), indent=2))
                return 0
            table = query(client, args.sql)
    except (pa.ArrowException, OSError) as e:
        hint = connection_hint(args.server, e, tls_ca is not None)
        print(f"error: {short_message(e)}" + (f"\n{hint}" if hint else ""), file=sys.stderr)
        return 1
    if args.output:
        _write(table, args.output)
        print(f"wrote {table.num_rows} rows to {args.output}")
    else:
        duckdb.from_arrow(table).show(max_rows=args.max_rows, max_width=160)
    return 0


def _tls_ca(path: Path | None) -> bytes | None:
    """The --tls-ca file's PEM, checked here: gRPC says only "empty address list" of a bad one."""
    if path is None:
        return None
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise SystemExit(f"error: --tls-ca {path}: {e.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise SystemExit(f"error: --tls-ca {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); "
                         "give the CA certificate that signed the server's, not a key")
    return pem


def _write(table, path: Path) -> None:
    """A result as the file's extension says: Parquet, CSV, or JSON (an array of row objects)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pq.write_table(table, path)
    elif suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        import duckdb

        with duckdb.connect() as con:  # DuckDB's JSON: timestamps, lists and structs as JSON values
            con.register("result", table)
            literal = str(path).replace("'", "''")
            con.execute(f"COPY result TO '{literal}' (FORMAT json, ARRAY true)")


def _models(args) -> int:
    from flight_lstm.models import ModelNotFound
    from flight_lstm.service import card_summary
    from udfs.base import registry

    cards = [card_summary(card) for card in registry().cards()]
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    defaults = set()
    for kind in {c["kind"] for c in cards}:
        try:
            defaults.add(registry().resolve(kind).ref)
        except ModelNotFound:  # a kind this version does not know, or its default is missing
            pass
    rows = [(f"{c['name']}@{c['version']}" + (" *" if f"{c['name']}@{c['version']}" in defaults else ""),
             c["kind"], ", ".join(map(str, c["frequencies"])) or "-", c["created"][:10],
             ", ".join(f"{name} {value:.4g}" for name, value in _headline(c["metrics"])) or "-") for c in cards]
    _print_table(("model", "kind", "frequencies", "created", "scores"), rows)
    print("* the default of its kind. Every metric: flight-lstm models --json")
    return 0


_SIZES = {"series", "points", "events", "n", "horizon", "season", "rows"}  # a data set's size, not a score


def _headline(metrics: dict, limit: int = 3) -> list[tuple[str, float]]:
    """The first few scores of a card: where a level holds the model's scores beside baselines'
    ("model", "naive2", ...), only the model's."""
    found = []

    def walk(value, path):
        if isinstance(value, dict):
            items = [("model", value["model"])] if isinstance(value.get("model"), dict) else value.items()
            for key, inner in items:
                walk(inner, path if key == "model" else (*path, key))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and path and path[-1] not in _SIZES:
            found.append((" ".join(path), value))

    walk(metrics, ())
    return found[:limit]


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], width: int = 60) -> None:
    """Columns padded to their widest cell; a cell past `width` characters is cut with "..."."""
    rows = [tuple(cell if len(cell) <= width else cell[:width - 3] + "..." for cell in row) for row in rows]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _train(args) -> int:
    from flight_lstm.errors import FlightLSTMError

    _size_threads(args.threads)
    threads.size_torch()  # training loads torch itself, not through an operator
    try:
        card = _trained(args)
    except FlightLSTMError as e:  # the --source or its --sql: a missing file, a typo, bad values
        raise SystemExit(f"error: {e}" + ("\nfix --source or --sql and run again" if args.source else "")) from None
    except (ValueError, OSError) as e:  # the data: too short, missing files, an unknown --freq
        raise SystemExit(f"error: {e}") from None
    if args.json:
        from flight_lstm.service import card_summary

        print(json.dumps(card_summary(card), indent=2))
        return 0
    info = card.training
    print(f"registered {card.ref} ({card.kind}) in {info.get('seconds', '?')} s, {info.get('epochs_run', '?')} epochs; "
          f"best validation score {info.get('best_val', float('nan')):.4g} (lower is better)")
    scores = ", ".join(f"{name} {value:.4g}" for name, value in _headline(card.metrics))
    if scores:
        print(f"scores: {scores}")
    print(f"card: {Path(card.path) / 'card.json'} (all of it: flight-lstm models --json)")
    return 0


def _trained(args):
    """The shipped recipe (--data) or the user's own data (--source and --sql); the new card."""
    from flight_lstm.models.registry import user_models_dir
    from flight_lstm.training import (train_from_source, train_shipped_anomaly, train_shipped_forecast,
                                      train_shipped_sentiment)

    epochs = {"epochs": args.epochs} if args.epochs else {}
    if args.source:
        if args.kind == "anomaly":
            raise SystemExit("anomaly models train on the shipped data only (--data)")
        if not (args.sql and args.name):
            raise SystemExit("--source needs --sql and --name")
        card = train_from_source(args.kind, args.source, args.sql, args.name, out_dir=args.out, seed=args.seed,
                                 epochs=args.epochs, parent=args.parent)
    else:
        if args.parent:
            raise SystemExit("error: --from fine-tunes on your own data: use it with --source and --sql")
        if args.kind == "sentiment":
            card = train_shipped_sentiment(args.data, args.out or user_models_dir(), seed=args.seed, **epochs)
        elif args.kind == "anomaly":
            card = train_shipped_anomaly(args.data, args.out or user_models_dir(), seed=args.seed, **epochs)
        else:
            card = train_shipped_forecast(args.data, args.out or user_models_dir(), freq=args.freq, seed=args.seed,
                                          **epochs)
    return card


def _evaluate(args) -> int:
    import duckdb

    _size_threads(args.threads)
    threads.size_torch()
    try:
        table = _report(args)
    except (ValueError, OSError) as e:  # the data: a missing folder or file, a set not found
        raise SystemExit(f"error: {e}") from None
    duckdb.from_arrow(table).show(max_width=200, max_rows=200)
    return 0


def _report(args):
    """The benchmark table of the kind asked for, beside its baselines."""
    from flight_lstm.evaluate import anomaly_report, forecast_report, sentiment_report

    if args.kind == "sentiment":
        table = sentiment_report(args.data, args.model)
    elif args.kind == "anomaly":
        table = anomaly_report(args.data, args.model)
    else:
        sets = [s.strip() for s in args.sets.split(",") if s.strip()] if args.sets else None
        table = forecast_report(args.data, args.model, sets, theta=False if args.no_theta else None)
    return table


def _backtest(args) -> int:
    """A forecast backtest (a table per series and a verdict) or a sentiment one (accuracy,
    confusion, calibration), beside baselines, on the rows of --sql."""
    import duckdb

    from flight_lstm import backtest
    from flight_lstm.errors import FlightLSTMError
    from flight_lstm.service import Service

    _size_threads(args.threads)
    try:
        service = Service.for_jobs(args.source)
        if args.kind == "forecast":
            if not args.horizon:
                raise SystemExit("error: a forecast backtest needs --horizon")
            rows = backtest.forecast_backtest(service, args.sql, args.horizon, origins=args.origins, level=args.level,
                                              model=args.model, freq=args.freq)
            duckdb.from_arrow(rows).show(max_width=220, max_rows=100)
            print(backtest.forecast_verdict(rows, args.level))
            return 0
        report = _sentiment_backtest(service, args.sql, args.model)
    except FlightLSTMError as e:
        raise SystemExit(f"error: {e}\nfix --source or --sql and run again") from None
    print(json.dumps(report, indent=2))
    return 0


def _sentiment_backtest(service, sql: str, model: str | None) -> dict:
    import numpy as np
    import pyarrow.compute as pc

    from flight_lstm import backtest
    from flight_lstm.errors import InvalidQuery
    from udfs import sentiment

    table = service.collect(service.plan(sql), {})
    if table.num_columns != 2:
        raise InvalidQuery(f"a sentiment backtest reads (text, label) rows; the query gives {table.column_names}")
    table = table.filter(pc.and_(pc.is_valid(table.column(0)), pc.is_valid(table.column(1))))
    texts = table.column(0).combine_chunks().cast("string")
    scores = np.array(sentiment(texts, model).to_numpy(zero_copy_only=False), dtype=float)
    try:
        from flight_lstm.evaluate import vader_scores

        vader = vader_scores(texts)
    except SystemExit:  # vaderSentiment is not installed: the model alone
        vader = None
    return backtest.sentiment_backtest(texts, backtest.labels_of(table.column(1).combine_chunks()), scores, vader)


def _plot(args) -> int:
    """Fetch what to draw with the table functions, then draw it (flight_lstm/plot.py)."""
    import pyarrow as pa

    from flight_lstm import plot
    from flight_lstm.errors import FlightLSTMError
    from flight_lstm.service import Service

    _size_threads(None)
    level = args.level or (0.999 if args.kind == "anomalies" else 0.95)
    try:
        plot.check_output(args.out)
        service = Service.for_jobs(args.source)

        def run(sql: str):
            return service.collect(service.plan(sql), {})

        if args.kind == "forecast":
            sql = plot.forecast_sql(args.table, args.key, args.ts, args.value, args.horizon, level, args.model)
            models = ", ".join(sorted(service.plan(sql).models)) if args.model else "the model of each series' frequency"
            out = plot.draw_forecast(run(plot.history_sql(args.table, args.key, args.ts, args.value,
                                                          args.history or 3 * args.horizon)), run(sql), args.out,
                                     title=f"{args.table}.{args.value}: {models}, {args.horizon} steps ahead, "
                                           f"{level:.0%} interval", ts=args.ts, value=args.value, level=level,
                                     max_panels=args.panels)
        elif args.kind == "backtest":
            queries = [plot.backtest_sql(args.table, args.key, args.ts, args.value, args.horizon, origin, level,
                                         args.model) for origin in range(1, args.origins + 1)]
            forecasts = pa.concat_tables([run(sql) for sql in queries])
            models = ", ".join(sorted(service.plan(queries[0]).models)) if args.model else "the model of each series' frequency"
            history = run(plot.history_sql(args.table, args.key, args.ts, args.value,
                                           args.history or (args.origins + 2) * args.horizon))
            out = plot.draw_backtest(history, forecasts, args.out, title=f"{args.table}.{args.value}: {models}, "
                                     f"{args.origins} origins of {args.horizon} steps, {level:.0%} interval",
                                     ts=args.ts, value=args.value, level=level, max_panels=args.panels)
        else:
            sql = plot.anomaly_sql(args.table, args.key, args.ts, args.value, level, args.model, args.history or 500)
            model = ", ".join(sorted(service.plan(sql).models))
            out = plot.draw_anomalies(run(sql), args.out, title=f"{args.table}.{args.value}: {model}, level {level:g}",
                                      ts=args.ts, value=args.value, level=level, max_panels=args.panels)
    except (FlightLSTMError, ValueError) as e:  # the query; the output file's type, nothing to draw, no matplotlib
        raise SystemExit(f"error: {e}") from None
    print(out)
    return 0


def _enrich(args) -> int:
    from flight_lstm.enrich import Job, TargetBusy, load_jobs, run, run_scheduled
    from flight_lstm.errors import FlightLSTMError

    _size_threads(args.threads)
    options = {k: getattr(args, k) for k in ("source", "sql", "key", "into", "every", "cron", "watermark",
                                             "rescore_on_model_change", "chunk_rows", "engine", "ray_address",
                                             "ray_workers")}
    try:
        if args.jobs:
            jobs = load_jobs(args.jobs, args.job)
        else:
            missing = [f"--{k}" for k in ("source", "sql", "key", "into") if not options[k]]
            if missing:
                print(f"error: enrich needs --source, --sql, --key and --into (or --jobs FILE); missing "
                      f"{', '.join(missing)}", file=sys.stderr)
                return 2
            jobs = [Job.from_options(options["into"], options)]
        scheduled = [j for j in jobs if j.schedule] if not (args.once or args.dry_run) else []
        for job in jobs:
            if job not in scheduled:
                print(run(job, dry_run=args.dry_run, wait=args.wait).line(), flush=True)
        if scheduled:
            stop = threading.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            run_scheduled(scheduled, lambda job: run(job, wait=args.wait, stop=stop), stop)
    except TargetBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: try again later
    except (FlightLSTMError, ValueError) as e:  # ValueError: a source URI of an unknown form
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
