"""Loading and validating the grid configuration (``agent_config.json``).

A real HTC-Grid deployment writes this file with ``terraform output agent_config``; the embedded
grid writes one with the same keys plus a few of its own (prefixed ``local_`` or naming the
local AWS endpoint). Unknown keys are ignored; a missing or mistyped key raises
:class:`~htcgrid.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

from .errors import ConfigError

#: Environment variable naming the configuration file, as HTC-Grid's own clients read it.
CONFIG_ENV = "AGENT_CONFIG_FILE"
#: Environment variable that selects private mode (inside the grid's VPC).
PRIVATE_ENV = "INTRA_VPC"

STORAGE_S3 = "S3"
STORAGE_REDIS = "REDIS"
STORAGE_S3_REDIS = "S3+REDIS"
STORAGE_SERVICES = (STORAGE_S3, STORAGE_REDIS, STORAGE_S3_REDIS)

AUTH_SRP = "USER_SRP_AUTH"
AUTH_PASSWORD = "USER_PASSWORD_AUTH"

ConfigSource = Union[str, os.PathLike, Mapping[str, Any], "GridConfig", None]


@dataclass(frozen=True)
class GridConfig:
    """The client's view of a grid configuration; immutable once loaded.

    Build it with :func:`load_config`. ``raw`` keeps every key of the file (read-only), for
    the parts of the embedded grid that read the agents' keys.
    """

    region: str
    storage: str
    s3_bucket: str
    public_api_url: str
    private_api_url: str
    api_key: str = field(repr=False)
    user_pool_id: str
    client_id: str
    results_pull_interval_sec: float
    private: bool
    s3_kms_key_id: str = ""
    redis_url: str = ""
    redis_password: str = field(default="", repr=False)
    task_input_via_storage: bool = True
    #: AWS endpoint of the embedded grid's services; ``None`` on a real deployment.
    aws_endpoint_url: str | None = None
    #: Endpoints of single services (by boto3 service name) that differ from the default.
    service_endpoints: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: Static AWS credentials the embedded grid hands out; ``None`` to use the usual chain.
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    #: How to sign in to the user pool: SRP (a real deployment) or plain password.
    auth_flow: str = AUTH_SRP
    source: str = "<dict>"
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def api_url(self) -> str:
        """The API stage URL of the chosen mode, without a trailing slash."""
        return (self.private_api_url if self.private else self.public_api_url).rstrip("/")

    @property
    def is_local(self) -> bool:
        """True for a configuration written by the embedded grid."""
        return self.aws_endpoint_url is not None

    def get(self, key: str, default: Any = None) -> Any:
        """Return a key of the file as written (agents' keys included)."""
        return self.raw.get(key, default)


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def _read(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> tuple[dict[str, Any], str]:
    origin = ""
    if source is None:
        named = os.environ.get(CONFIG_ENV)
        if not named:
            raise ConfigError(
                f"no grid configuration given: pass a path or a dict, or set {CONFIG_ENV} to "
                "the agent_config.json of your grid (run 'htcgrid local' for an embedded one)"
            )
        source, origin = named, f" (named by ${CONFIG_ENV})"
    if isinstance(source, Mapping):
        return dict(source), "<dict>"
    path = Path(source).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = (
            f": point {CONFIG_ENV} at a running grid's agent_config.json (an embedded grid "
            "removes its own when it stops), or unset it"
            if origin
            else ""
        )
        raise ConfigError(f"grid configuration file {path}{origin} does not exist{hint}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read grid configuration file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"grid configuration file {path} is not valid JSON (line {exc.lineno}, column "
            f"{exc.colno}: {exc.msg})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"grid configuration file {path} must hold a JSON object")
    return data, str(path)


class _Reader:
    """Takes typed values out of the raw mapping, naming the key and file on error."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = data
        self.source = source
        #: Required keys found missing, reported together once every key was read.
        self.missing: list[str] = []

    def _where(self) -> str:
        return "the grid configuration" if self.source == "<dict>" else self.source

    def text(self, key: str, *, required: bool = True, default: str = "") -> str:
        if key not in self.data or self.data[key] is None:
            if required:
                self.missing.append(key)
            return default
        value = self.data[key]
        if not isinstance(value, str):
            raise ConfigError(
                f"{self._where()}: {key!r} must be a string, not {type(value).__name__}"
            )
        if required and not value.strip():
            raise ConfigError(f"{self._where()}: {key!r} is empty")
        return value.strip()

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{self._where()}: {key!r} must be a number of seconds, not {value!r}"
            ) from None
        if number <= 0:
            raise ConfigError(f"{self._where()}: {key!r} must be positive, not {value!r}")
        return number


def load_config(source: ConfigSource = None, *, private: bool | None = None) -> GridConfig:
    """Load and validate a grid configuration.

    Parameters
    ----------
    source : path, dict, GridConfig or None
        The ``agent_config.json`` of a grid, as a path or as its parsed dict. ``None`` reads
        the path from the ``AGENT_CONFIG_FILE`` environment variable.
    private : bool, optional
        Private mode (inside the grid's VPC: the private API and its api key, no sign-in).
        ``None`` takes it from the ``INTRA_VPC`` environment variable.

    Raises
    ------
    ConfigError
        The file is missing or not JSON, or a required key is missing or mistyped.

    Examples
    --------
    >>> config = load_config("agent_config.json")  # doctest: +SKIP
    >>> config.region  # doctest: +SKIP
    'eu-west-1'
    """
    if isinstance(source, GridConfig):
        if private is None or private == source.private:
            return source
        return load_config(dict(source.raw), private=private) if source.raw else source
    data, origin = _read(source)
    read = _Reader(data, origin)
    if private is None:
        private = _truthy(os.environ.get(PRIVATE_ENV, ""))

    storage = read.text("grid_storage_service").upper() or STORAGE_S3
    if storage not in STORAGE_SERVICES:
        raise ConfigError(
            f"{read._where()}: 'grid_storage_service' is {storage!r}; expected one of "
            f"{', '.join(STORAGE_SERVICES)}"
        )
    uses_s3 = storage in (STORAGE_S3, STORAGE_S3_REDIS)
    uses_redis = storage in (STORAGE_REDIS, STORAGE_S3_REDIS)
    auth_flow = read.text("local_cognito_auth_flow", required=False, default=AUTH_SRP)
    if auth_flow not in (AUTH_SRP, AUTH_PASSWORD):
        raise ConfigError(
            f"{read._where()}: 'local_cognito_auth_flow' must be {AUTH_SRP} or {AUTH_PASSWORD}"
        )

    endpoints = data.get("local_aws_endpoints") or {}
    if not isinstance(endpoints, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in endpoints.items()
    ):
        raise ConfigError(f"{read._where()}: 'local_aws_endpoints' must map service names to URLs")

    fields: dict[str, Any] = dict(
        region=read.text("region"),
        storage=storage,
        s3_bucket=read.text("s3_bucket", required=uses_s3),
        s3_kms_key_id=read.text("s3_kms_key_id", required=False),
        redis_url=read.text("redis_url", required=uses_redis),
        redis_password=read.text("redis_password", required=False),
        public_api_url=read.text("public_api_gateway_url", required=not private),
        private_api_url=read.text("private_api_gateway_url", required=private),
        api_key=read.text("api_gateway_key", required=private),
        user_pool_id=read.text("user_pool_id", required=not private),
        client_id=read.text("cognito_userpool_client_id", required=not private),
        results_pull_interval_sec=read.number("dynamodb_results_pull_interval_sec", 1.0),
        private=private,
        task_input_via_storage=_truthy(data.get("task_input_passed_via_external_storage", 1)),
        aws_endpoint_url=read.text("aws_endpoint_url", required=False) or None,
        service_endpoints=MappingProxyType(dict(endpoints)),
        aws_access_key_id=read.text("local_aws_access_key_id", required=False) or None,
        aws_secret_access_key=read.text("local_aws_secret_access_key", required=False) or None,
        auth_flow=auth_flow,
    )
    if read.missing:
        names = ", ".join(repr(key) for key in read.missing)
        plural = "key" if len(read.missing) == 1 else "keys"
        raise ConfigError(f"{read._where()} has no {names} {plural}")
    return GridConfig(**fields, source=origin, raw=MappingProxyType(dict(data)))
