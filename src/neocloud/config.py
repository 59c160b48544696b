"""Where the CLI and the SDK find the control plane: the user's config file and environment.

The config file is ``$NEOCLOUD_HOME/config.json`` (``NEOCLOUD_HOME`` defaults to
``~/.neocloud``), a JSON object ``{"url": "http://127.0.0.1:8700", "token": "nc-..."}``
written by ``neocloud up`` with mode ``0600`` because it holds a secret.

A connection setting is resolved field by field, first match wins:

1. the value passed in code (``Client(url=..., token=...)``) or on the command line
   (``neocloud --url ... --token ...``);
2. the environment: ``NEOCLOUD_URL``, ``NEOCLOUD_TOKEN``;
3. the config file;
4. for the URL only, :data:`DEFAULT_URL`.

An empty value counts as unset at every step: ``NEOCLOUD_TOKEN=`` (or ``--token ""``)
means "no token from here", and the next source decides (the config file's token, if
any). To send no token at all, leave it out of the config file too.

The URL is the control plane's base URL, ``http://host:port``. A URL that ends in the
REST API's prefix ``/api/v1`` (as copied from an API call) means the same control plane:
the prefix is removed (:func:`base_url`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from neocloud.errors import InvalidRequest

#: The control plane that ``neocloud up`` starts when given no ``--host``/``--port``.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8700
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

ENV_HOME = "NEOCLOUD_HOME"
ENV_URL = "NEOCLOUD_URL"
ENV_TOKEN = "NEOCLOUD_TOKEN"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class CliConfig:
    """The saved connection: the control plane's base URL and an API token (either may be
    missing)."""

    url: str | None = None
    token: str | None = None


def home_dir() -> Path:
    """The neocloud data folder: ``$NEOCLOUD_HOME`` or ``~/.neocloud`` (not created here)."""
    raw = os.environ.get(ENV_HOME)
    return Path(raw).expanduser() if raw else Path.home() / ".neocloud"


def config_path() -> Path:
    """Path of the CLI/SDK config file inside :func:`home_dir`."""
    return home_dir() / CONFIG_FILE


def load_config() -> CliConfig:
    """Read the config file.

    Returns:
        The saved URL and token; an empty :class:`CliConfig` when the file does not exist.

    Raises:
        InvalidRequest: the file exists but is not a JSON object of strings.
    """
    path = config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return CliConfig()
    except OSError as exc:
        raise InvalidRequest(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"config file {path} is not valid JSON (line {exc.lineno}): fix or delete it"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest(f"config file {path} must hold a JSON object")
    values: dict[str, str | None] = {}
    for key in ("url", "token"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"config file {path}: {key!r} must be a string")
        values[key] = value or None
    return CliConfig(url=values["url"], token=values["token"])


def save_config(url: str, token: str) -> Path:
    """Write ``{"url": url, "token": token}`` to the config file, readable by the owner only.

    The folder is created (mode ``0700``) if missing; the file is replaced atomically and
    has mode ``0600`` from the moment it exists.

    Returns:
        The path written.
    """
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"url": url, "token": token}, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class Connection:
    """Where to send API calls: a base URL (always set) and a token (may be missing)."""

    url: str
    token: str | None = None


def resolve(url: str | None = None, token: str | None = None) -> Connection:
    """Resolve the URL and token by the precedence in this module's docstring.

    The config file is read only when an explicit value or the environment leaves a field
    unset. The URL comes back without a trailing ``/``; the token may stay ``None``.

    Raises:
        InvalidRequest: the config file had to be read and is malformed, or the URL or
            token that won is not usable (:func:`check_url`, :func:`check_token`; the
            message names where it came from).
    """
    url_from, token_from = "the URL given", "the token given"
    if not url and os.environ.get(ENV_URL):
        url, url_from = os.environ[ENV_URL], ENV_URL
    if not token and os.environ.get(ENV_TOKEN):
        token, token_from = os.environ[ENV_TOKEN], ENV_TOKEN
    if not url or not token:
        saved = load_config()
        if not url and saved.url:
            url, url_from = saved.url, f"config file {config_path()}"
        if not token and saved.token:
            token, token_from = saved.token, f"config file {config_path()}"
    url = base_url(url or DEFAULT_URL)
    check_url(url, source=url_from)
    if token:
        check_token(token, source=token_from)
    return Connection(url=url, token=token or None)


#: The REST API's path under the control plane's base URL.
API_PREFIX = "/api/v1"


def base_url(url: str) -> str:
    """``url`` without trailing ``/`` and without a final ``/api/v1`` (see the module
    docstring): ``http://h:8700/api/v1/`` -> ``http://h:8700``."""
    url = url.rstrip("/")
    if url.lower().endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)].rstrip("/")
    return url


def check_url(url: str, *, source: str = "the URL") -> None:
    """Raise :class:`InvalidRequest` (naming ``source``) unless ``url`` is an ``http`` or
    ``https`` URL with a host."""
    import httpx  # here: the config file's readers need not import it

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidRequest(f"{source}: {url!r} is not a valid URL ({exc})",
                             param="url") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidRequest(
            f"{source}: {url!r} is not an http(s) URL with a host, e.g. {DEFAULT_URL}",
            param="url")


def check_token(token: str, *, source: str = "the token") -> None:
    """Raise :class:`InvalidRequest` (naming ``source``, never echoing the token) unless
    ``token`` is visible ASCII, which is all an HTTP header can carry as is."""
    bad = next((i for i, ch in enumerate(token) if not "!" <= ch <= "~"), None)
    if bad is not None:
        raise InvalidRequest(
            f"{source}: the API token has a character that is not visible ASCII at position "
            f"{bad + 1}; copy the token again (tokens look like nc-...)", param="token")
