"""Settings: one typed object, built once at start-up from a TOML file and the environment.

Precedence (highest first): explicit overrides (CLI flags), environment variables
``CIAMS_<NAME>`` (nested with ``__``, e.g. ``CIAMS_ARCHIVE__ON_CONFLICT``), the config
file (``--config FILE``, else ``$CIAMS_CONFIG``, else ``<data-dir>/ciams.toml`` when it
exists), then the defaults below. Nothing is read at import time.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ciams.errors import ConfigError

# The config file of the settings being built (pydantic-settings asks for sources per class).
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("ciams_config_file", default=None)


class ArchiveSettings(BaseModel):
    """Storage and index behaviour."""

    on_conflict: Literal["reject", "version"] = Field(
        "reject",
        description=(
            "Same SOP Instance UID with different bytes: 'reject' keeps the stored one and "
            "answers a warning/409 (the new bytes go to quarantine); 'version' keeps the "
            "newer as the current version and records the older one in the history."
        ),
    )
    max_upload_bytes: int = Field(
        4 * 1024**3, description="Largest accepted HTTP upload (STOW-RS, web) in bytes."
    )
    index_batch_max: int = Field(
        64, description="Most index rows committed in one transaction (group commit)."
    )
    query_limit: int = Field(
        10_000,
        ge=0,
        description="Most matches one search returns (0 = no limit). C-FIND sends that many "
        "and ends with status FE00 (matching terminated, as Orthanc does); QIDO-RS caps "
        "its limit there and says so in a Warning header.",
    )


class DicomSettings(BaseModel):
    """DIMSE network service."""

    host: str = Field("127.0.0.1", description="Address the DICOM listener binds to.")
    port: int = Field(11112, description="DICOM port (0 = any free port).")
    ae_title: str = Field("CIAMS", description="Our AE title.")
    allowed_calling_aes: list[str] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; empty accepts all (with a warning).",
    )
    max_pdu: int = Field(
        1048576, description="Maximum PDU size we receive; larger means fewer PDUs per image."
    )
    network_timeout: float = Field(60.0, description="Seconds before an idle association ends.")
    max_associations: int = Field(32, description="Concurrent associations accepted.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="DICOM processes: the main one accepts and hands associations round-robin "
        "to the others, so parallel associations use several cores.",
    )


class HttpSettings(BaseModel):
    """HTTP service (REST, DICOMweb, web UI)."""

    host: str = Field("127.0.0.1", description="Address the HTTP listener binds to.")
    port: int = Field(8080, description="HTTP port.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="HTTP processes listening on the one port (SO_REUSEPORT: the kernel "
        "picks one per connection by a hash of the client's address), so DICOMweb "
        "requests use several cores.",
    )
    base_url: str = Field("", description="Public base URL, used in RetrieveURL; empty = derived.")


class TaskSettings(BaseModel):
    """Background work (huey)."""

    backend: Literal["embedded", "redis"] = Field(
        "embedded",
        description="'embedded' runs a SQLite-backed queue inside the server process; "
        "'redis' enqueues to Redis, consumed by `ciams worker` processes.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for 'redis'.")
    workers: int = Field(2, description="Worker threads of the embedded consumer.")
    series_settle_seconds: float = Field(
        30.0, description="A series is complete after this long without a new instance."
    )


class AccessSettings(BaseModel):
    """Authentication and authorization."""

    secret_key_file: Path | None = Field(
        None,
        description="File holding the key that signs web sessions; empty = <data_dir>/secret.key, "
        "created with a random key on first start (there is never a default secret).",
    )
    session_hours: float = Field(8.0, description="Web session lifetime in hours.")
    anonymous_dicom_on_loopback: bool = Field(
        True,
        description="Let calling AEs that are not bound to a user act as administrator when "
        "the DICOM listener is bound to a loopback address (local tools on the server).",
    )


class TlsSettings(BaseModel):
    """HTTPS and DICOM TLS (PS3.15 Annex B). Paths to PEM files; empty = plain TCP."""

    cert_file: Path | None = Field(None, description="Server certificate chain (PEM).")
    key_file: Path | None = Field(None, description="Server private key (PEM).")
    ca_file: Path | None = Field(
        None, description="CA bundle to verify client certificates (DICOM TLS peers)."
    )
    require_client_cert: bool = Field(
        False, description="DICOM TLS: refuse peers without a certificate signed by ca_file."
    )
    dicom: bool = Field(True, description="Use TLS on the DICOM listener when a cert is set.")
    http: bool = Field(True, description="Use HTTPS on the HTTP listener when a cert is set.")

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None and self.key_file is not None


class DeidSettings(BaseModel):
    """De-identification at the central ingest."""

    trial_recipes: dict[str, Path] = Field(
        default_factory=dict,
        description="Trial code -> recipe YAML whose de-identification every instance of "
        "that trial must show on arrival ('*' = every trial); others are quarantined.",
    )


class Settings(BaseSettings):
    """All CIAMS settings."""

    model_config = SettingsConfigDict(
        env_prefix="CIAMS_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(Path("data"), description="Folder for storage, index and queue.")
    database_url: str = Field(
        "", description="SQLAlchemy URL; empty = SQLite at <data_dir>/index.db (WAL mode)."
    )
    log_phi: bool = Field(False, description="Allow patient identifiers in log messages.")
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)  # type: ignore[arg-type]
    dicom: DicomSettings = Field(default_factory=DicomSettings)  # type: ignore[arg-type]
    http: HttpSettings = Field(default_factory=HttpSettings)  # type: ignore[arg-type]
    tasks: TaskSettings = Field(default_factory=TaskSettings)  # type: ignore[arg-type]
    access: AccessSettings = Field(default_factory=AccessSettings)  # type: ignore[arg-type]
    tls: TlsSettings = Field(default_factory=TlsSettings)  # type: ignore[arg-type]
    deid: DeidSettings = Field(default_factory=DeidSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _CONFIG_FILE.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def db_url(self) -> str:
        """The effective database URL."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.db').resolve()}"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings: defaults < config file < environment < overrides (None ignored)."""
    path = config_file or (
        Path(os.environ["CIAMS_CONFIG"]) if "CIAMS_CONFIG" in os.environ else None
    )
    if path is None:
        data_dir = overrides.get("data_dir") or os.environ.get("CIAMS_DATA_DIR") or "data"
        candidate = Path(data_dir) / "ciams.toml"
        path = candidate if candidate.is_file() else None
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {path} does not exist")
    clean = {k: v for k, v in overrides.items() if v is not None}
    token = _CONFIG_FILE.set(Path(path) if path else None)
    try:
        return Settings(**clean)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    finally:
        _CONFIG_FILE.reset(token)


def dump_default() -> str:
    """A commented default configuration file (TOML)."""
    lines = ["# CIAMS configuration. Every key can also be set as CIAMS_<KEY> (nested: __).", ""]

    def emit(model: type[BaseModel], prefix: str) -> None:
        nested: list[tuple[str, type[BaseModel]]] = []
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                nested.append((name, ann))
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, Path):
                default = str(default)
            if field.description:
                lines.append(f"# {field.description}")
            if default is None:
                lines.append(f'# {name} = "..."  (unset)')
            else:
                lines.append(f"{name} = {_toml_value(default)}")
            lines.append("")
        for name, sub in nested:
            lines.append(f"[{prefix}{name}]")
            emit(sub, f"{prefix}{name}.")

    emit(Settings, "")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, Path):
        return _toml_value(str(value))
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
