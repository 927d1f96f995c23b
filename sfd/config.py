"""The TOML config: read, validated whole, secrets resolved, every error naming its key path."""

from __future__ import annotations

import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from sfd.connectors.registry import MARKETPLACE_SETTINGS, SHOP_SETTINGS, offline_carriers
from sfd.connectors.settings import ConnectorSettings
from sfd.domain.carriers import config_key

CONFIG_ENV = "SFD_CONFIG"
POSTGRES_SCHEMES = ("postgresql", "postgres")
DEFAULT_LISTEN = "127.0.0.1:8642"
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SECRET_REF = re.compile(r"(env|file|credential):(.*)", re.DOTALL)
_MSGSPEC_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


class ConfigError(Exception):
    """A config that cannot be used; each problem names the file and the key path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per problem: `FILE: PATH: what is expected`."""
        return [
            f"{self.source}: {path}: {what}" if path else f"{self.source}: {what}"
            for path, what in self.problems
        ]


class Duration(float):
    """A length of time in seconds, written in the config as 90s, 5m, 1h or 1h30m."""

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Read `90s`, `5m`, `1h30m`, `2d`; raise ValueError on anything else."""
        parts = _DURATION_PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"expected a duration such as 90s, 5m or 1h, got {text!r}")
        seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
        if seconds <= 0:
            raise ValueError(f"expected a duration greater than zero, got {text!r}")
        return cls(seconds)


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


class DaemonConfig(_Section, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The `[daemon]` table."""

    database: str | None = None
    """An SQLite file's path (the default), or a PostgreSQL URL `postgresql://user@host/db`."""
    database_password: str | None = None
    """The PostgreSQL password, as a secret: `env:NAME`, `file:PATH` or `credential:NAME`."""
    listen: str = DEFAULT_LISTEN
    log_format: str = "auto"
    log_level: str = "info"
    operation_concurrency: int = 4
    """At most this many operations run at once on one channel."""
    operation_max_age: Duration = Duration(48 * 3600)
    """An operation still failing to reach its marketplace after this long fails for good."""
    confirm_delay: Duration = Duration(60)
    """How soon after a delivery sfd first asks the marketplace whether it took effect."""
    lease_ttl: Duration = Duration(30)
    """On PostgreSQL, how long an instance's lease on a channel or shop outlives its last
    renewal (renewed every third of it): a dead instance's work moves on within about this."""
    pii_retention: Duration = Duration(30 * 86400)
    """How long after an order closed its buyer's personal data is erased (docs/privacy.md)."""


class StoreConfig(_Section, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One `[[stores]]` entry: a merchant's store, which orders and tokens belong to."""

    id: int
    name: str


class _Connected(_Section, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What channels and shops share: a name, a store, a connector and its settings."""

    name: str
    store: int
    connector: str
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


class ChannelConfig(_Connected, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One `[[channels]]` entry: a marketplace account polled for orders."""

    poll_interval: Duration = Duration(1800)
    import_since: Duration = Duration(30 * 86400)
    """How far back the channel's first poll reaches, when it has no cursor yet."""
    auto_accept: bool = False
    """Accept orders waiting for acceptance by itself; off until the merchant turns it on."""
    require_tracking: bool = False
    ship_deadline_warning: Duration = Duration(86400)
    carriers: dict[str, str] = msgspec.field(default_factory=dict)
    """`[channels.carriers]`: the shop's carrier name → the marketplace's carrier code."""


class ShopConfig(_Connected, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """One `[[shops]]` entry: a shop that sfd pushes orders into."""

    sync_interval: Duration = Duration(600)
    tracking_wait: Duration = Duration(86400)
    """How long a completed order on a `require_tracking` channel waits for its tracking."""


class _RawConfig(_Section, kw_only=True, forbid_unknown_fields=True, frozen=True):
    daemon: DaemonConfig = DaemonConfig()
    stores: list[StoreConfig] = msgspec.field(default_factory=list)
    channels: list[ChannelConfig] = msgspec.field(default_factory=list)
    shops: list[ShopConfig] = msgspec.field(default_factory=list)


class Config(msgspec.Struct, kw_only=True, frozen=True):
    """A validated config, with every secret resolved and every connector's settings typed."""

    source: str
    daemon: DaemonConfig
    database: Path
    """The SQLite file; on PostgreSQL, a local path standing for the database (the admin
    socket sits beside it)."""
    database_url: str | None
    """The PostgreSQL URL, never with a password in it; None on SQLite."""
    database_password: str | None
    """The resolved PostgreSQL password (a secret), or None to let asyncpg find one
    (PGPASSWORD, ~/.pgpass)."""
    listen_host: str
    listen_port: int
    stores: list[StoreConfig]
    channels: list[ChannelConfig]
    shops: list[ShopConfig]
    channel_settings: dict[str, ConnectorSettings]
    shop_settings: dict[str, ConnectorSettings]
    secrets: frozenset[str]
    """Every secret value, so logs and errors can redact it wherever it appears."""

    @property
    def database_target(self) -> str:
        """What storage opens: the PostgreSQL URL, else the SQLite file's path."""
        return self.database_url or str(self.database)


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Duration:
        if not isinstance(value, str):
            raise TypeError(f"expected a duration such as 90s, 5m or 1h, got {value!r}")
        return Duration.parse(value)
    raise NotImplementedError


def _from_msgspec(error: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """Turn msgspec's `... - at `$.a[0].b`` into our (key path, what is expected)."""
    match = _MSGSPEC_PATH.match(str(error))
    assert match is not None
    msg, path = match["msg"], (match["path"] or "")
    unknown = re.fullmatch(r"Object contains unknown field `(.+)`", msg)
    missing = re.fullmatch(r"Object missing required field `(.+)`", msg)
    if unknown:
        path, msg = f"{path}.{unknown[1]}", "unknown key"
    elif missing:
        path, msg = f"{path}.{missing[1]}", "required key is missing"
    else:
        msg = re.sub(r"`([^`]*)`", lambda m: _toml_type(m[1]), msg)
        msg = msg[0].lower() + msg[1:]
    full = prefix + path
    return full.lstrip("."), msg


_TOML_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "array": "an array",
    "object": "a table",
}


def _toml_type(name: str) -> str:
    """Name msgspec's types as a TOML author knows them."""
    kinds = [k for k in name.split(" | ") if k != "null"]
    return " or ".join(_TOML_TYPES.get(k, k) for k in kinds)


class _SecretResolver:
    """Resolves `env:NAME`, `file:PATH` and `credential:NAME` values."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def resolve(self, value: str) -> tuple[str, bool]:
        """The value a reference points to, and whether it was a reference; raises ValueError."""
        match = _SECRET_REF.fullmatch(value)
        if match is None:
            return value, False
        scheme, name = match[1], match[2]
        if not name:
            raise ValueError(f"{scheme}: needs a name after the colon")
        if scheme == "env":
            if name not in self.environ:
                raise ValueError(f"environment variable {name} is not set")
            return self.environ[name], True
        if scheme == "file":
            return self._read(Path(name), f"file {name}"), True
        directory = self.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise ValueError(
                f"credential {name} asked for, but CREDENTIALS_DIRECTORY is not set "
                "(give it with LoadCredential= in the unit)"
            )
        if "/" in name or name in {".", ".."}:
            raise ValueError(f"credential name {name!r} must not contain '/'")
        return self._read(Path(directory) / name, f"credential {name}"), True

    @staticmethod
    def _read(path: Path, what: str) -> str:
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except FileNotFoundError:
            raise ValueError(f"{what} does not exist") from None
        except OSError as exc:
            raise ValueError(f"{what} cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{what} is not UTF-8 text") from None


def resolve_secret(value: str, environ: Mapping[str, str]) -> tuple[str, bool]:
    """What an `env:`/`file:`/`credential:` reference points to (or the value itself), and
    whether it was a reference; ValueError says why one cannot be read."""
    return _SecretResolver(environ).resolve(value)


def _parse_listen(listen: str) -> tuple[str, int]:
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", listen)
    # Port 0 asks the system for a free port; the daemon logs the one it got.
    if match is None or not 0 <= int(match[2]) < 65536:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8642, got {listen!r}")
    return match[1].strip("[]"), int(match[2])


def _default_database(environ: Mapping[str, str]) -> Path:
    state = environ.get("STATE_DIRECTORY")
    if state:
        # systemd may list several directories separated by ':'; ours is the first.
        return Path(state.split(":")[0]) / "sfd.db"
    return Path("var/sfd.db")


def _check_database(
    daemon: DaemonConfig,
    env: Mapping[str, str],
    resolver: _SecretResolver,
    problems: list[tuple[str, str]],
) -> tuple[Path, str | None, str | None]:
    """The SQLite path, or the PostgreSQL URL and password, of `[daemon] database`."""
    value = daemon.database
    scheme = value.split("://", 1)[0].lower() if value and "://" in value else ""
    if scheme not in POSTGRES_SCHEMES:
        if scheme:
            problems.append(
                (
                    "daemon.database",
                    f"expected a file path or a postgresql:// URL, got a {scheme}:// URL",
                )
            )
        if daemon.database_password is not None:
            problems.append(
                ("daemon.database_password", "only a PostgreSQL database takes a password")
            )
        return (Path(value) if value else _default_database(env)), None, None
    assert value is not None
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        problems.append(("daemon.database", f"not a valid PostgreSQL URL: {exc}"))
        return _default_database(env), None, None
    if parts.password is not None:
        # A password in the URL would sit in the config file and in every log of the URL.
        problems.append(
            (
                "daemon.database",
                'the URL holds a password; give it as database_password = "env:NAME" '
                "(or file:PATH, credential:NAME) and leave it out of the URL",
            )
        )
        return _default_database(env), None, None
    name = parts.path.lstrip("/")
    if not parts.hostname and "host=" not in parts.query:
        problems.append(("daemon.database", "the URL names no host: postgresql://USER@HOST/DB"))
    if not name:
        problems.append(("daemon.database", "the URL names no database: postgresql://USER@HOST/DB"))
    password: str | None = None
    if daemon.database_password is not None:
        try:
            password, _ = resolver.resolve(daemon.database_password)
        except ValueError as exc:
            problems.append(("daemon.database_password", str(exc)))
    # The admin socket of a daemon on PostgreSQL sits in the state directory.
    state = _default_database(env).with_name(f"postgres-{name or 'sfd'}")
    return state, value, password


def parse_config(
    text: str, source: str = "<config>", environ: Mapping[str, str] | None = None
) -> Config:
    """Validate a whole config and resolve its secrets; raise ConfigError naming every problem."""
    env = os.environ if environ is None else environ
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("", f"not valid TOML: {exc}")]) from None
    try:
        raw = msgspec.convert(document, _RawConfig, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(source, [_from_msgspec(exc, "")]) from None

    problems: list[tuple[str, str]] = []
    host, port = _check_daemon(raw.daemon, problems)
    store_ids = _check_stores(raw.stores, problems)
    resolver = _SecretResolver(env)
    secrets: set[str] = set()
    database, database_url, password = _check_database(raw.daemon, env, resolver, problems)
    if password:
        secrets.add(password)
    channel_settings = _check_connected(
        "channels", raw.channels, MARKETPLACE_SETTINGS, store_ids, resolver, secrets, problems
    )
    shop_settings = _check_connected(
        "shops", raw.shops, SHOP_SETTINGS, store_ids, resolver, secrets, problems
    )
    for i, channel in enumerate(raw.channels):
        _check_carriers(f"channels[{i}]", channel, problems)

    if problems:
        raise ConfigError(source, problems)
    return Config(
        source=source,
        daemon=raw.daemon,
        database=database,
        database_url=database_url,
        database_password=password,
        listen_host=host,
        listen_port=port,
        stores=raw.stores,
        channels=raw.channels,
        shops=raw.shops,
        channel_settings=channel_settings,
        shop_settings=shop_settings,
        secrets=frozenset(s for s in secrets if s),
    )


def _check_daemon(daemon: DaemonConfig, problems: list[tuple[str, str]]) -> tuple[str, int]:
    """Check `[daemon]`; return the host and port it listens on."""
    try:
        host, port = _parse_listen(daemon.listen)
    except ValueError as exc:
        problems.append(("daemon.listen", str(exc)))
        host, port = "", 0
    for key, allowed in (("log_format", LOG_FORMATS), ("log_level", LOG_LEVELS)):
        value = getattr(daemon, key)
        if value not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            problems.append((f"daemon.{key}", f"expected one of {choices}, got {value!r}"))
    if daemon.lease_ttl < 1:
        problems.append(("daemon.lease_ttl", f"expected 1s or more, got {daemon.lease_ttl}s"))
    if daemon.operation_concurrency < 1:
        problems.append(
            (
                "daemon.operation_concurrency",
                f"expected 1 or more, got {daemon.operation_concurrency}",
            )
        )
    return host, port


def _check_stores(stores: Sequence[StoreConfig], problems: list[tuple[str, str]]) -> set[int]:
    """Check `[[stores]]`; return their ids."""
    store_ids: set[int] = set()
    for i, store in enumerate(stores):
        if store.id < 1:
            problems.append((f"stores[{i}].id", f"expected a positive integer, got {store.id}"))
        if store.id in store_ids:
            problems.append((f"stores[{i}].id", f"duplicate store id {store.id}"))
        if not store.name.strip():
            problems.append((f"stores[{i}].name", "must not be empty"))
        store_ids.add(store.id)
    return store_ids


def _check_connected(
    section: str,
    entries: Sequence[_Connected],
    registry: Mapping[str, type[ConnectorSettings]],
    store_ids: set[int],
    resolver: _SecretResolver,
    secrets: set[str],
    problems: list[tuple[str, str]],
) -> dict[str, ConnectorSettings]:
    """Check `[[channels]]` or `[[shops]]`; return each entry's typed settings, by name."""
    typed: dict[str, ConnectorSettings] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{section}[{i}]"
        if not _CHANNEL_NAME.fullmatch(entry.name):
            problems.append(
                (
                    f"{where}.name",
                    f"expected letters, digits, '-' and '_' only, got {entry.name!r}",
                )
            )
        elif entry.name in names:
            problems.append((f"{where}.name", f"duplicate name {entry.name!r}"))
        names.add(entry.name)
        if entry.store not in store_ids:
            problems.append((f"{where}.store", f"no store with id {entry.store} in [[stores]]"))
        kind = registry.get(entry.connector)
        if kind is None:
            known = ", ".join(sorted(registry))
            problems.append(
                (f"{where}.connector", f"unknown connector {entry.connector!r} (known: {known})")
            )
            continue
        settings = _typed_settings(
            f"{where}.settings", entry.settings, kind, resolver, secrets, problems
        )
        if settings is not None:
            typed[entry.name] = settings
    return typed


def _check_carriers(where: str, channel: ChannelConfig, problems: list[tuple[str, str]]) -> None:
    """Check `[channels.carriers]`: names and codes not empty, no name twice, and every code
    one the marketplace lists where its list is known offline (Amazon, eBay)."""
    listed = (
        offline_carriers(channel.connector) if channel.connector in MARKETPLACE_SETTINGS else None
    )
    codes = {known.code for known in listed} if listed is not None else None
    seen: dict[str, str] = {}
    for name, code in channel.carriers.items():
        key = f"{where}.carriers.{_toml_key(name)}"
        if not name.strip():
            problems.append((key, "the shop's carrier name must not be empty"))
            continue
        if config_key(name) in seen:
            problems.append(
                (key, f"same carrier as {_toml_key(seen[config_key(name)])} (names match "
                 "ignoring case and surrounding spaces)")
            )  # fmt: skip
            continue
        seen[config_key(name)] = name
        if not code.strip():
            problems.append((key, "the marketplace's carrier code must not be empty"))
        elif codes is not None and code.strip() not in codes:
            problems.append(
                (key, f"{code!r} is not one of {channel.connector}'s carrier codes for channel "
                 f"{channel.name!r} (`sfd channels carriers {channel.name}` lists them)")
            )  # fmt: skip


def _toml_key(name: str) -> str:
    """A table key as TOML writes it: bare when it can be, else quoted."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _typed_settings(
    where: str,
    settings: dict[str, Any],
    kind: type[ConnectorSettings],
    resolver: _SecretResolver,
    secrets: set[str],
    problems: list[tuple[str, str]],
) -> ConnectorSettings | None:
    resolved: dict[str, Any] = {}
    ok = True
    for key, value in settings.items():
        if isinstance(value, str):
            try:
                value, was_reference = resolver.resolve(value)
            except ValueError as exc:
                problems.append((f"{where}.{key}", str(exc)))
                ok = False
                continue
            if was_reference or key in kind.secret_fields:
                secrets.add(value)
            if key in kind.secret_fields and not value.strip():
                problems.append((f"{where}.{key}", "secret is empty"))
                ok = False
        resolved[key] = value
    if not ok:
        return None
    try:
        typed = msgspec.convert(resolved, kind)
    except msgspec.ValidationError as exc:
        problems.append(_from_msgspec(exc, where))
        return None
    for key in sorted(kind.url_fields):
        url = getattr(typed, key)
        if not re.match(r"https?://[^/\s]+", url):
            problems.append((f"{where}.{key}", f"expected an http(s):// URL, got {url!r}"))
            return None
    return typed


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at `path`."""
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [("", "config file does not exist")]) from None
    except OSError as exc:
        raise ConfigError(source, [("", f"config file cannot be read: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, [("", "config file is not UTF-8 text")]) from None
    return parse_config(text, source, environ)
