"""Starting the app for browser tests: `streamlit run app.py` on a free port, as users start it,
waited for until it answers its health check and stopped when the test module is done."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO


def free_port() -> int:
    """A port nothing listens on now (the OS picks it, so parallel sessions never collide)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def app_server(config: Path | None, stop_timeout: float = 60) -> Iterator[str]:
    """The app on `config` (None: the default config, as `streamlit run app.py` alone opens);
    yields its base URL. Fails the test with the server's output if it does not start in 2 minutes."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if config is None:
        env.pop("LLM_FLOW_CONFIG", None)
    else:
        env["LLM_FLOW_CONFIG"] = str(config)
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"streamlit did not start: {process.stdout.read()}")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=stop_timeout)
