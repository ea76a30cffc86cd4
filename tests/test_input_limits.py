"""The pipeline's inputs have limits: URL sources against a real misbehaving server on 127.0.0.1,
synthetic sizes, local paths outside the allowed folders, credentials in recorded URLs."""

from __future__ import annotations

import base64
import http.server
import os
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from mlpipeline.download import DataUnavailableError, download_data
from mlpipeline.files import file_sha256
from mlpipeline.preprocessing import preprocess_data
from mlpipeline.remote import redact_text, redact_url
from mlpipeline.settings import PipelineSettings
from mlpipeline.sources import SOURCE_PATTERN, DataError, parse_synthetic_spec

CSV = b"a,b,target\n" + b"".join(b"%d,%d,%d\n" % (i, i * 2, i % 2) for i in range(40))
STOP_AFTER = 30.0  # no handler of the test server runs longer than this, whatever the client does


class _Server:
    """A real HTTP server on 127.0.0.1 that answers each path with one kind of misbehaviour."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.auth: list[str | None] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.auth.append(self.headers.get("Authorization"))
                path = self.path.split("?")[0]
                getattr(self, "answer_" + path.strip("/").replace("-", "_").replace(".", "_"), self.answer_missing)()

            def answer_missing(self) -> None:
                self.send_error(404)

            def answer_data_csv(self) -> None:
                self._head(200, len(CSV))
                self.wfile.write(CSV)

            def answer_other_host(self) -> None:  # the same server under another loopback name
                self._redirect(f"http://localhost:{server.port}/data.csv")

            def answer_same_host(self) -> None:
                self._redirect("/data.csv")

            def answer_loop(self) -> None:
                self._redirect("/loop")

            def answer_trickle(self) -> None:  # a body of 1000 bytes, one byte every 0.5 s
                self._head(200, 1000)
                self._drip(b"1")

            def answer_trickle_headers(self) -> None:
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                self._drip(b"X")  # an endless header line, slowly

            def answer_endless(self) -> None:  # no length, never ends, as fast as the client reads
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                chunk = b"1,2,0\n" * 10_000
                started = time.monotonic()
                while not server.stopping.is_set() and time.monotonic() - started < STOP_AFTER:
                    if not self._write(chunk):
                        return

            def answer_drizzle(self) -> None:  # endless, 60 KB every 0.05 s: steady, under any cap for a while
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                started = time.monotonic()
                while not server.stopping.wait(0.05) and time.monotonic() - started < STOP_AFTER:
                    if not self._write(b"1,2,0\n" * 10_000):
                        return

            def answer_big(self) -> None:  # announces more than any cap in these tests
                self._head(200, 10**12)
                self._write(b"a,b,target\n")

            def _head(self, status: int, length: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(length))
                self.end_headers()

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _drip(self, byte: bytes) -> None:
                started = time.monotonic()
                while not server.stopping.wait(0.5) and time.monotonic() - started < STOP_AFTER:
                    if not self._write(byte):
                        return

            def _write(self, data: bytes) -> bool:
                try:
                    self.wfile.write(data)
                    self.wfile.flush()
                    return True
                except OSError:  # the client hung up: what a bounded client does
                    return False

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    with _Server() as running:
        yield running


def settings(tmp_path: Path, **env: str) -> PipelineSettings:
    return PipelineSettings.from_env({"MLWF_DATA_ROOT": str(tmp_path / "data"), **env})


def assert_nothing_left(out: Path) -> None:
    """No raw.parquet and no temporary file: a failed download leaves the folder as it was."""
    assert sorted(p.name for p in out.iterdir()) == [], sorted(p.name for p in out.iterdir())


# --------------------------------------------------------------------------- URL sources


def test_redirect_to_another_host_is_refused_at_once(tmp_path, server):
    out = tmp_path / "data" / "out"
    with pytest.raises(DataError, match=rf"redirects to http://localhost:{server.port}/data.csv: only redirects "
                                        "within one host") as info:
        download_data(f"{server.base}/other-host", out, settings=settings(tmp_path))
    assert not info.value.retryable  # the DAG fails the task without retries
    assert server.auth == [None]  # the other host was never asked
    assert_nothing_left(out)


def test_redirect_within_the_host_is_followed(tmp_path, server):
    result = download_data(f"{server.base}/same-host", tmp_path / "data" / "out", settings=settings(tmp_path))
    assert result["rows"] == 40 and len(server.auth) == 2


def test_redirect_loop_ends(tmp_path, server):
    out = tmp_path / "data" / "out"
    with pytest.raises(DataError, match="redirects more than 5 times"):
        download_data(f"{server.base}/loop", out, settings=settings(tmp_path))
    assert_nothing_left(out)


@pytest.mark.parametrize("path", ["trickle", "trickle-headers"])
def test_a_trickling_server_fails_within_the_deadline(tmp_path, server, path):
    """A byte every 0.5 s never trips a read timeout (30 s here); the overall deadline ends it."""
    out = tmp_path / "data" / "out"
    started = time.monotonic()
    with pytest.raises(DataUnavailableError, match=r"did not finish within 1.5 s \(MLWF_DOWNLOAD_TIMEOUT\)") as info:
        download_data(f"{server.base}/{path}", out, settings=settings(tmp_path, MLWF_DOWNLOAD_TIMEOUT="1.5"))
    elapsed = time.monotonic() - started
    assert 1.4 < elapsed < 3.5, elapsed
    assert info.value.retryable  # a slow server may be quicker on the next try
    assert_nothing_left(out)


def test_an_endless_body_stops_at_the_byte_cap(tmp_path, server):
    out = tmp_path / "data" / "out"
    started = time.monotonic()
    with pytest.raises(DataError, match=r"sent more than the cap of 1000000 bytes \(MLWF_DOWNLOAD_MAX_BYTES\)") as info:
        download_data(f"{server.base}/endless", out, settings=settings(tmp_path, MLWF_DOWNLOAD_MAX_BYTES="1000000"))
    assert time.monotonic() - started < 5
    assert not info.value.retryable
    assert_nothing_left(out)


def test_an_endless_body_under_a_large_cap_stops_at_the_deadline(tmp_path, server):
    out = tmp_path / "data" / "out"
    started = time.monotonic()
    with pytest.raises(DataUnavailableError, match="did not finish within 1 s"):
        download_data(f"{server.base}/drizzle", out, settings=settings(tmp_path, MLWF_DOWNLOAD_TIMEOUT="1"))
    assert time.monotonic() - started < 3
    assert_nothing_left(out)


def test_an_announced_size_over_the_cap_is_refused_before_reading(tmp_path, server):
    out = tmp_path / "data" / "out"
    with pytest.raises(DataError, match=r"announces 1000000000000 bytes, over the cap of 209715200"):
        download_data(f"{server.base}/big", out, settings=settings(tmp_path))
    assert_nothing_left(out)


def test_a_failed_download_keeps_the_previous_data(tmp_path, server):
    out = tmp_path / "data" / "out"
    previous = download_data("sklearn:iris", out, settings=settings(tmp_path))
    with pytest.raises(DataError):
        download_data(f"{server.base}/endless", out, settings=settings(tmp_path, MLWF_DOWNLOAD_MAX_BYTES="100000"))
    assert sorted(p.name for p in out.iterdir()) == ["raw.parquet"]
    assert file_sha256(out / "raw.parquet") == previous["fingerprint"]


# --------------------------------------------------------------------------- credentials in URLs


def test_credentials_in_a_source_url_are_used_but_never_recorded(tmp_path, server):
    url = f"http://alice:s3cret@127.0.0.1:{server.port}/data.csv?token=tok123&part=1"
    result = download_data(url, tmp_path / "data" / "out", settings=settings(tmp_path))
    assert server.auth == ["Basic " + base64.b64encode(b"alice:s3cret").decode()]
    assert result["source"] == f"http://127.0.0.1:{server.port}/data.csv?token=REDACTED&part=1"
    with pytest.raises(DataError) as info:
        download_data(url.replace("data.csv", "nothing.csv"), tmp_path / "data" / "out", settings=settings(tmp_path))
    assert "HTTP 404" in str(info.value)
    assert "s3cret" not in str(info.value) and "tok123" not in str(info.value) and "alice" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h.example/x.csv", "https://h.example/x.csv"),
        ("https://h.example:8443/x.csv?sig=abc&X-Amz-Signature=d&api_key=e&n=2",
         "https://h.example:8443/x.csv?sig=REDACTED&X-Amz-Signature=REDACTED&api_key=REDACTED&n=2"),
        ("http://[::1]:9000/a?password=x", "http://[::1]:9000/a?password=REDACTED"),
        ("http://h.example/a/b.csv", "http://h.example/a/b.csv"),
        ("http://h.example:bad/x", "http://REDACTED"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_text_finds_every_url():
    text = "GET https://u:pw@a.example/x?token=t failed; see http://b.example/ok"
    assert redact_text(text) == "GET https://a.example/x?token=REDACTED failed; see http://b.example/ok"


def test_model_metadata_records_the_redacted_source(tmp_path, server):
    """deploy_model records the XCom's source as data_source: the redacted one."""
    from mlpipeline.model_deployment import deploy_model
    from mlpipeline.model_training import evaluate_model, train_model

    s = settings(tmp_path)
    raw = download_data(f"http://bob:hunter2@127.0.0.1:{server.port}/data.csv?key=k1", tmp_path / "data" / "d",
                           settings=s)
    pre = preprocess_data(raw["path"], tmp_path / "data" / "p")
    model = train_model(pre["train_path"], tmp_path / "data" / "t")
    metrics = evaluate_model(model["model_path"], pre["holdout_path"], tmp_path / "data" / "e")
    result = deploy_model(model["model_path"], {k: metrics[k] for k in ("accuracy", "f1", "roc_auc")},
                          registry_root=s.registry_dir, thresholds={"accuracy": 0.1}, tolerance=0.02,
                          metadata={"run_id": "r1", "data_source": raw["source"]})
    text = Path(result["metadata_path"]).read_text()
    assert f"http://127.0.0.1:{server.port}/data.csv?key=REDACTED" in text
    assert "hunter2" not in text and "k1" not in text


# --------------------------------------------------------------------------- synthetic sizes


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rows=10_000_001,features=2", "rows must be between 1 and 10,000,000"),
        ("rows=10,features=1001", "features must be between 2 and 1,000"),
        ("rows=1000000,features=101", r"rows x features must be at most 100,000,000 \(got 101,000,000\)"),
        ("rows=10,features=10,classes=101", "classes must be between 2 and 100"),
        ("rows=10,seed=4294967296", "seed must be between 0 and 4,294,967,295"),
    ],
)
def test_synthetic_sizes_are_bounded(tmp_path, spec, message):
    out = tmp_path / "data" / "out"
    started = time.monotonic()
    with pytest.raises(DataError, match=message):
        download_data(f"synthetic:{spec}", out, settings=settings(tmp_path))
    assert time.monotonic() - started < 2  # refused before generating anything
    assert not out.exists()


def test_the_synthetic_limits_themselves_are_accepted():
    assert parse_synthetic_spec("synthetic:rows=10000000,features=10")["rows"] == 10_000_000
    assert parse_synthetic_spec("synthetic:rows=100000,features=1000,classes=100")["features"] == 1000


# --------------------------------------------------------------------------- local paths


@pytest.fixture
def layout(tmp_path):
    """data/ (the data root), project/, elsewhere/ (a readable CSV outside both, and a corrupt one)."""
    for name in ("data", "project", "elsewhere"):
        (tmp_path / name).mkdir()
    (tmp_path / "elsewhere" / "good.csv").write_bytes(CSV)
    (tmp_path / "elsewhere" / "corrupt.csv").write_bytes(b"\xff\x00garbage")
    (tmp_path / "project" / "in.csv").write_bytes(CSV)
    return tmp_path


def project_settings(root: Path, **env: str) -> PipelineSettings:
    return settings(root, MLWF_PROJECT_ROOT=str(root / "project"), **env)


@pytest.mark.parametrize(
    "source",
    [
        "{root}/elsewhere/good.csv",
        "{root}/elsewhere/corrupt.csv",  # "outside", not "cannot read": refused before it is read
        "{root}/elsewhere/missing.csv",  # and no hint whether it exists
        "{root}/data/../elsewhere/good.csv",
        "../elsewhere/good.csv",  # relative to the project
        "{root}/data/link.csv",  # a symlink inside pointing outside
        "{root}/data/linked-dir/good.csv",
    ],
)
def test_files_outside_the_allowed_folders_are_refused(layout, source):
    (layout / "data" / "link.csv").symlink_to(layout / "elsewhere" / "good.csv")
    (layout / "data" / "linked-dir").symlink_to(layout / "elsewhere")
    out = layout / "data" / "out"
    with pytest.raises(DataError, match=r"is outside the folders data may be read from: .*MLWF_ALLOWED_DATA_DIRS"):
        download_data(source.format(root=layout), out, settings=project_settings(layout))
    assert not out.exists()


def test_files_under_the_project_or_the_data_root_are_read(layout):
    s = project_settings(layout)
    (layout / "data" / "inside.csv").symlink_to(layout / "project" / "in.csv")  # a link within: fine
    for source in ("in.csv", str(layout / "project" / "in.csv"), str(layout / "data" / "inside.csv")):
        result = download_data(source, layout / "data" / "out", settings=s)
        assert result["rows"] == 40 and result["source"] == source


def test_allowed_data_dirs_widen_the_folders(layout):
    source = str(layout / "elsewhere" / "good.csv")
    wider = project_settings(layout, MLWF_ALLOWED_DATA_DIRS=f"/nonexistent{os.pathsep}{layout / 'elsewhere'}")
    assert download_data(source, layout / "data" / "out", settings=wider)["rows"] == 40


def test_a_prefix_is_not_a_parent(layout):
    """/x/data-other is not under /x/data."""
    (layout / "data-other").mkdir()
    (layout / "data-other" / "good.csv").write_bytes(CSV)
    with pytest.raises(DataError, match="is outside"):
        download_data(str(layout / "data-other" / "good.csv"), layout / "data" / "out", settings=settings(layout))


# --------------------------------------------------------------------------- the trigger-time check


@pytest.mark.parametrize(
    ("source", "accepted"),
    [
        ("sklearn:wine", True), ("synthetic:rows=5", True), ("https://h.example/x.csv", True),
        ("HTTP://h.example/x.csv", True), ("/data/x.csv", True), ("data/x.parquet", True), ("./a:b.csv", True),
        ("sklearn:boston", False), ("ftp://h.example/x.csv", False), ("s3:bucket/x.csv", False),
        ("file:///etc/passwd", False), ("https://", False),
    ],
)
def test_the_source_parameter_schema(source, accepted):
    """The DAG's `source` Param uses this pattern: the form is refused when a run is triggered."""
    valid = jsonschema.Draft7Validator({"type": "string", "pattern": SOURCE_PATTERN}).is_valid(source)
    assert valid is accepted

