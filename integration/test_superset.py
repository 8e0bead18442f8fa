"""Apache Superset pointed at flight-lstm, for real (`make integration`; never part of `make test`).

Runs in .venv-superset (Superset, this project installed without its dependencies, so only the
`flight_lstm://` SQLAlchemy dialect is used there). The flight-lstm server runs from the project's
own venv (FLIGHT_LSTM_PYTHON) on a demo lakehouse with a prediction view. Superset runs on
loopback with SQLite for its metadata. Everything goes through Superset's REST API; the chart is
then opened in headless Chromium (Debian's chromium + chromium-driver) with the admin's session
cookie, the way Superset's own screenshot machinery logs in, and saved as integration/out/chart.png.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "out"
FLIGHT_LSTM_PYTHON = os.environ.get("FLIGHT_LSTM_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
SUPERSET = str(Path(sys.executable).parent / "superset")
VIEW = "review_scores=SELECT id, review, sentiment(review) AS score, sentiment_label(review) AS label FROM reviews"
ADMIN = ("admin", "admin-" + secrets.token_hex(4))
CHART_SQL = "SELECT id, sentiment(review) AS score FROM reviews ORDER BY id"

CONFIG = """\
SECRET_KEY = {secret!r}
SQLALCHEMY_DATABASE_URI = {db!r}
DATA_DIR = {home!r}
WTF_CSRF_ENABLED = False          # a test on loopback; the API is used with a bearer token
TALISMAN_ENABLED = False
SUPERSET_WEBSERVER_TIMEOUT = 120
SQLLAB_TIMEOUT = 120
FEATURE_FLAGS = {{}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    OUT.mkdir(exist_ok=True)
    return tmp_path_factory.mktemp("superset")


@pytest.fixture(scope="module")
def flight_server(workdir):
    """A flight-lstm server on a demo lakehouse with the review_scores prediction view."""
    lake = workdir / "lake.db"
    subprocess.run([FLIGHT_LSTM_PYTHON, str(ROOT / "examples" / "make_lakehouse.py"), str(lake)], check=True)
    port = free_port()
    log = open(OUT / "flight-lstm.log", "w")
    proc = subprocess.Popen([FLIGHT_LSTM_PYTHON, "-m", "flight_lstm.cli", "serve", "--source", f"duckdb://{lake}",
                             "--host", "127.0.0.1", "--port", str(port), "--view", VIEW],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True, 120,
                 "flight-lstm server")
        yield f"flight_lstm://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def superset(workdir):
    """Superset on 127.0.0.1 with SQLite metadata, no examples, one admin: its base URL."""
    home = workdir / "home"
    home.mkdir()
    config = workdir / "superset_config.py"
    config.write_text(CONFIG.format(secret=secrets.token_urlsafe(32), db=f"sqlite:///{workdir / 'superset.db'}",
                                    home=str(home)))
    env = {**os.environ, "SUPERSET_CONFIG_PATH": str(config), "SUPERSET_HOME": str(home),
           "FLASK_APP": "superset.app:create_app()", "PYTHONWARNINGS": "ignore"}
    log = open(OUT / "superset.log", "w")

    def cli(*args):
        subprocess.run([SUPERSET, *args], env=env, check=True, stdout=log, stderr=subprocess.STDOUT)

    cli("db", "upgrade")
    cli("fab", "create-admin", "--username", ADMIN[0], "--password", ADMIN[1], "--firstname", "Ada",
        "--lastname", "Admin", "--email", "admin@example.invalid")
    cli("init")
    port = free_port()
    proc = subprocess.Popen([SUPERSET, "run", "-h", "127.0.0.1", "-p", str(port), "--with-threads"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{base}/health", timeout=5).text == "OK", 300, "Superset")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def api(superset):
    """A requests session logged in to Superset's API with a bearer token."""
    session = requests.Session()
    r = session.post(f"{superset}/api/v1/security/login",
                     json={"username": ADMIN[0], "password": ADMIN[1], "provider": "db", "refresh": True})
    r.raise_for_status()
    session.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    session.base = superset
    return session


def call(api, method: str, path: str, **kw) -> dict:
    r = api.request(method, f"{api.base}{path}", timeout=180, **kw)
    assert r.status_code in (200, 201), f"{method} {path}: {r.status_code} {r.text[:600]}"
    return r.json()


@pytest.fixture(scope="module")
def database(api, flight_server) -> int:
    call(api, "POST", "/api/v1/database/test_connection/",
         json={"database_name": "flight-lstm", "sqlalchemy_uri": flight_server})
    body = call(api, "POST", "/api/v1/database/",
                json={"database_name": "flight-lstm", "sqlalchemy_uri": flight_server, "expose_in_sqllab": True})
    return body["id"]


def test_database_added(api, database):
    body = call(api, "GET", f"/api/v1/database/{database}")
    assert body["result"]["backend"] == "flight_lstm"
    assert body["result"]["database_name"] == "flight-lstm"


def test_schemas_tables_views_and_types(api, database):
    schemas = call(api, "GET", f"/api/v1/database/{database}/schemas/")["result"]
    assert "main" in schemas
    q = "(schema_name:main,force:!t)"
    tables = {t["value"]: t["type"] for t in call(api, "GET", f"/api/v1/database/{database}/tables/?q={q}")["result"]}
    assert tables == {"reviews": "table", "sales": "table", "review_scores": "view"}
    meta = call(api, "GET", f"/api/v1/database/{database}/table_metadata/",
                params={"name": "review_scores", "schema": "main"})
    types = {c["name"]: c["type"] for c in meta["columns"]}
    assert types == {"id": "BIGINT", "review": "VARCHAR", "score": "FLOAT", "label": "VARCHAR"}, types
    sales = call(api, "GET", f"/api/v1/database/{database}/table_metadata/", params={"name": "sales", "schema": "main"})
    assert {c["name"]: c["type"] for c in sales["columns"]} == {"store": "VARCHAR", "ts": "DATETIME",
                                                                "amount": "FLOAT"}


def test_sql_lab_table_preview(api, database):
    """SQL Lab's preview of a view: Superset writes the SELECT *, flight-lstm runs the operator."""
    sql = call(api, "GET", f"/api/v1/database/{database}/select_star/review_scores/main/")["result"]
    body = call(api, "POST", "/api/v1/sqllab/execute/",
                json={"database_id": database, "schema": "main", "sql": sql, "runAsync": False,
                      "client_id": secrets.token_hex(5), "queryLimit": 100})
    assert body["status"] == "success", (sql, body)
    assert len(body["data"]) == 19 and {"id", "review", "score", "label"} <= set(body["data"][0])


def test_sql_lab_runs_an_operator(api, database):
    body = call(api, "POST", "/api/v1/sqllab/execute/",
                json={"database_id": database, "schema": "main", "sql": CHART_SQL, "runAsync": False,
                      "client_id": secrets.token_hex(5), "queryLimit": 100})
    assert body["status"] == "success", body
    rows = body["data"]
    assert len(rows) == 19
    scores = {r["id"]: r["score"] for r in rows}
    assert scores[1] > 0.5 and scores[2] < -0.5          # a warm review, a bad one
    assert scores[18] is None and scores[19] is None     # empty and NULL text


def test_sql_lab_shows_the_servers_error(api, database):
    r = api.post(f"{api.base}/api/v1/sqllab/execute/",
                 json={"database_id": database, "schema": "main", "sql": "SELECT nope FROM reviews",
                       "runAsync": False, "client_id": secrets.token_hex(5)}, timeout=180)
    # Superset's generic engine spec reports every database error as a 500 GENERIC_DB_ENGINE_ERROR.
    assert r.status_code in (400, 500), r.text[:600]
    message = r.json()["errors"][0]["message"]
    assert 'column "nope" not found' in message and "Traceback" not in message, message


@pytest.mark.parametrize("sql, rows, columns", [
    ("SELECT * FROM forecast_table('sales', key => 'store', ts => 'ts', value => 'amount', horizon => 24)",
     4 * 24, {"store", "ts", "step", "mean", "lo", "hi"}),
    ("SELECT store, count(*) AS points, max(score) AS worst FROM anomaly_table('sales', key => 'store', "
     "ts => 'ts', value => 'amount') GROUP BY store", 4, {"store", "points", "worst"}),
])
def test_sql_lab_runs_table_operators(api, database, sql, rows, columns):
    body = call(api, "POST", "/api/v1/sqllab/execute/",
                json={"database_id": database, "schema": "main", "sql": sql, "runAsync": False,
                      "client_id": secrets.token_hex(5), "queryLimit": 1000})
    assert body["status"] == "success", body
    assert len(body["data"]) == rows
    assert columns <= set(body["data"][0]), body["data"][0]


@pytest.fixture(scope="module")
def chart(api, database) -> dict:
    dataset = call(api, "POST", "/api/v1/dataset/",
                   json={"database": database, "schema": "main", "table_name": "review_scores"})["id"]
    metric = {"expressionType": "SIMPLE", "column": {"column_name": "score"}, "aggregate": "MAX", "label": "score"}
    params = {"datasource": f"{dataset}__table", "viz_type": "echarts_timeseries_bar", "x_axis": "id",
              "metrics": [metric], "groupby": [], "adhoc_filters": [], "row_limit": 100, "orientation": "vertical",
              "x_axis_sort_asc": True, "show_legend": False, "y_axis_format": "SMART_NUMBER"}
    query_context = {"datasource": {"id": dataset, "type": "table"}, "force": True, "form_data": params,
                     "queries": [{"columns": ["id"], "metrics": [metric], "orderby": [["id", True]],
                                  "row_limit": 100, "filters": []}],
                     "result_format": "json", "result_type": "full"}
    chart_id = call(api, "POST", "/api/v1/chart/",
                    json={"slice_name": "Review sentiment (flight-lstm)", "viz_type": params["viz_type"],
                          "datasource_id": dataset, "datasource_type": "table", "params": json.dumps(params),
                          "query_context": json.dumps(query_context)})["id"]
    return {"id": chart_id, "dataset": dataset}


def test_chart_created_and_its_query_runs(api, chart):
    assert call(api, "GET", f"/api/v1/chart/{chart['id']}")["result"]["slice_name"] == "Review sentiment (flight-lstm)"
    cols = {c["column_name"]: c["type"] for c in call(api, "GET", f"/api/v1/dataset/{chart['dataset']}")["result"]["columns"]}
    assert cols == {"id": "BIGINT", "review": "VARCHAR", "score": "DOUBLE", "label": "VARCHAR"}, cols
    body = call(api, "GET", f"/api/v1/chart/{chart['id']}/data/")
    result = body["result"][0]
    assert result["rowcount"] == 19, result
    assert "sentiment(review)" not in result["query"] and "review_scores" in result["query"]
    assert sum(1 for r in result["data"] if r["score"] is not None and r["score"] > 0) >= 5


def chromium_screenshot(base: str, cookie: str, path: Path, url: str) -> None:
    """Open URL in headless Chromium with Superset's session cookie; wait for the chart to draw."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,800", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    try:
        driver.set_page_load_timeout(180)
        driver.get(f"{base}/health")                      # on the origin, so the cookie can be set
        driver.add_cookie({"name": "session", "value": cookie, "path": "/"})
        driver.get(url)
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".chart-container canvas, .chart-container svg"),
                 180, "the chart")
        time.sleep(3)                                     # echarts animates its first draw
        element = driver.find_element(By.CSS_SELECTOR, ".chart-container")
        element.screenshot(str(path))
    finally:
        driver.quit()


def test_screenshot_shows_the_chart(superset, chart):
    from PIL import Image

    web = requests.Session()
    r = web.post(f"{superset}/login/", data={"username": ADMIN[0], "password": ADMIN[1]}, allow_redirects=False)
    assert r.status_code in (302, 303) and "session" in web.cookies, r.text[:500]
    png = OUT / "chart.png"
    png.unlink(missing_ok=True)
    chromium_screenshot(superset, web.cookies["session"], png,
                        f"{superset}/explore/?slice_id={chart['id']}&standalone=1")
    image = Image.open(png).convert("RGB")
    width, height = image.size
    assert width >= 300 and height >= 200, image.size
    small = image.resize((width // 4, height // 4))
    pixels = list(getattr(small, "get_flattened_data", small.getdata)())
    background = max(set(pixels), key=pixels.count)
    drawn = [p for p in pixels if sum(abs(a - b) for a, b in zip(p, background)) > 60]
    assert len(drawn) > 0.02 * len(pixels), f"only {len(drawn)} of {len(pixels)} pixels drawn"
    colored = {(r // 32, g // 32, b // 32) for r, g, b in drawn if max(r, g, b) - min(r, g, b) > 40}
    assert len(colored) >= 1 and len({p for p in drawn}) >= 5, "no colored bars in the screenshot"
