"""How long the app's server takes to stop on SIGTERM with sessions attached.

    python -m benchmarks.shutdown                 # 1 and 8 sessions, 3 times each
    python -m benchmarks.shutdown --sessions 8 --repeats 1 --port 8611

Each case starts `streamlit run app.py` on the default config (SmolLM2), opens the sessions in
headless Chromium (one browser context each), waits until every one shows the app, sends SIGTERM
and times the exit. The machine's load average is printed beside each time: on a 2-core machine
shared with other jobs it moves the numbers more than anything the app does.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync", "--disable-background-networking"]


def one_stop(port: int, sessions: int) -> tuple[float, float]:
    """(seconds from SIGTERM to exit, 1-minute load average at SIGTERM)."""
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=LAUNCH_ARGS)
            pages = [browser.new_context().new_page() for _ in range(sessions)]
            for page in pages:
                page.goto(url)
            for page in pages:
                page.get_by_text("Next token after").wait_for(timeout=600_000)
            time.sleep(3)
            load = os.getloadavg()[0]
            start = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=300)
            seconds = time.monotonic() - start
            browser.close()
        return seconds, load
    finally:
        if server.poll() is None:
            server.kill()


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the server at {url} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--port", type=int, default=8611)
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        raise SystemExit("needs Chromium (Debian package 'chromium')")
    print("| sessions | SIGTERM to exit (median) | each (load average) |")
    print("|---:|---:|---|")
    for sessions in args.sessions:
        runs = [one_stop(args.port, sessions) for _ in range(args.repeats)]
        each = ", ".join(f"{s:.1f} s ({load:.0f})" for s, load in runs)
        print(f"| {sessions} | {statistics.median(s for s, _ in runs):.1f} s | {each} |", flush=True)


if __name__ == "__main__":
    main()
