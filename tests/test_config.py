"""The TOML config: a broken config is refused with the file, the key path and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfd.config import ConfigError, Duration, load_config, parse_config
from sfd.connectors.settings import MiraklSettings
from sfd.daemon.cli import main
from tests.support import run_cli

STORE = '[[stores]]\nid = 1\nname = "My shop"\n'
CHANNEL = """
[[channels]]
name = "decathlon"
store = 1
connector = "mirakl"
poll_interval = "30m"
auto_accept = true
require_tracking = true
ship_deadline_warning = "24h"
[channels.settings]
base_url = "https://marketplace-decathlon-eu.mirakl.net"
api_key = "env:DECATHLON_API_KEY"
"""
ENV = {"DECATHLON_API_KEY": "k-3f9a1c"}


def test_a_full_config_is_read_with_its_secrets_resolved() -> None:
    config = parse_config(STORE + CHANNEL, "sfd.toml", ENV)
    channel = config.channels[0]
    assert (channel.name, channel.store, channel.connector) == ("decathlon", 1, "mirakl")
    assert channel.poll_interval == 1800.0
    assert channel.ship_deadline_warning == 86400.0
    settings = config.channel_settings["decathlon"]
    assert isinstance(settings, MiraklSettings)
    assert settings.api_key == "k-3f9a1c"
    assert config.secrets == frozenset({"k-3f9a1c"})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8642)


def test_acceptance_is_off_and_a_first_poll_reaches_30_days_unless_set() -> None:
    bare = CHANNEL.replace("auto_accept = true\n", "")
    default = parse_config(STORE + bare, "sfd.toml", ENV).channels[0]
    assert default.auto_accept is False
    assert default.import_since == 30 * 86400
    chosen = bare.replace('poll_interval = "30m"', 'poll_interval = "30m"\nimport_since = "3d"')
    assert parse_config(STORE + chosen, "sfd.toml", ENV).channels[0].import_since == 3 * 86400
    with pytest.raises(ConfigError, match=r"channels\[0\]\.import_since: expected a duration"):
        parse_config(STORE + chosen.replace('"3d"', '"a month"'), "sfd.toml", ENV)


def test_the_database_defaults_to_the_state_directory_under_systemd() -> None:
    config = parse_config(STORE, "sfd.toml", {"STATE_DIRECTORY": "/var/lib/sfd"})
    assert config.database == Path("/var/lib/sfd/sfd.db")
    assert parse_config(STORE, "sfd.toml", {}).database == Path("var/sfd.db")


def test_secrets_come_from_files_and_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "decathlon-api-key").write_text("from-credential")
    by_file = CHANNEL.replace("env:DECATHLON_API_KEY", f"file:{tmp_path / 'key'}")
    by_credential = CHANNEL.replace("env:DECATHLON_API_KEY", "credential:decathlon-api-key")
    from_file = parse_config(STORE + by_file, "sfd.toml", {})
    from_cred = parse_config(
        STORE + by_credential, "sfd.toml", {"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert from_file.channel_settings["decathlon"].api_key == "from-file"  # type: ignore[attr-defined]
    assert from_cred.channel_settings["decathlon"].api_key == "from-credential"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", 90),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("250ms", 0.25),
    ],
)
def test_durations_read_as_seconds(text: str, expected: float) -> None:
    assert Duration.parse(text) == expected


BROKEN: list[tuple[str, str, dict[str, str], str]] = [
    (
        "unknown key in [daemon]",
        STORE + "[daemon]\nlisten_addr = '0.0.0.0:1'\n",
        ENV,
        "daemon.listen_addr: unknown key",
    ),
    ("unknown top-level table", STORE + "[metrics]\nenabled = true\n", ENV, "metrics: unknown key"),
    (
        "wrong type",
        STORE + CHANNEL.replace("auto_accept = true", 'auto_accept = "yes"'),
        ENV,
        "channels[0].auto_accept: expected true or false, got a string",
    ),
    (
        "store id as text",
        '[[stores]]\nid = "one"\nname = "My shop"\n',
        ENV,
        "stores[0].id: expected an integer, got a string",
    ),
    (
        "bad duration",
        STORE + CHANNEL.replace('"30m"', '"30 minutes"'),
        ENV,
        "channels[0].poll_interval: expected a duration such as 90s, 5m or 1h, got '30 minutes'",
    ),
    (
        "duplicate channel",
        STORE + CHANNEL + CHANNEL,
        ENV,
        "channels[1].name: duplicate name 'decathlon'",
    ),
    (
        "unknown store",
        STORE + CHANNEL.replace("store = 1", "store = 7"),
        ENV,
        "channels[0].store: no store with id 7 in [[stores]]",
    ),
    (
        "unknown connector",
        STORE + CHANNEL.replace('"mirakl"', '"mirakel"'),
        ENV,
        "channels[0].connector: unknown connector 'mirakel' (known: amazon, ebay, mirakl)",
    ),
    (
        "secret from an unset variable",
        STORE + CHANNEL,
        {},
        "channels[0].settings.api_key: environment variable DECATHLON_API_KEY is not set",
    ),
    (
        "empty secret",
        STORE + CHANNEL,
        {"DECATHLON_API_KEY": ""},
        "channels[0].settings.api_key: secret is empty",
    ),
    (
        "missing secret",
        STORE + CHANNEL.replace('api_key = "env:DECATHLON_API_KEY"\n', ""),
        ENV,
        "channels[0].settings.api_key: required key is missing",
    ),
    (
        "unknown settings key",
        STORE + CHANNEL + 'api_secret = "x"\n',
        ENV,
        "channels[0].settings.api_secret: unknown key",
    ),
    (
        "bad channel name",
        STORE + CHANNEL.replace('name = "decathlon"', 'name = "deca thlon"'),
        ENV,
        "channels[0].name: expected letters, digits, '-' and '_' only, got 'deca thlon'",
    ),
    (
        "bad listen",
        STORE + '[daemon]\nlisten = "localhost"\n',
        ENV,
        "daemon.listen: expected HOST:PORT such as 127.0.0.1:8642, got 'localhost'",
    ),
    (
        "bad log format",
        STORE + '[daemon]\nlog_format = "xml"\n',
        ENV,
        "daemon.log_format: expected one of 'auto', 'json', 'console', got 'xml'",
    ),
    (
        "credential outside systemd",
        STORE + CHANNEL.replace("env:DECATHLON_API_KEY", "credential:deca"),
        {},
        "channels[0].settings.api_key: credential deca asked for, but CREDENTIALS_DIRECTORY is "
        "not set (give it with LoadCredential= in the unit)",
    ),
    (
        "base url without scheme",
        STORE + CHANNEL.replace("https://", ""),
        ENV,
        "channels[0].settings.base_url: expected an http(s):// URL, "
        "got 'marketplace-decathlon-eu.mirakl.net'",
    ),
    (
        "not TOML",
        "[[stores]\nid = 1\n",
        ENV,
        "not valid TOML: Expected ']]' at the end of an array declaration (at line 1, column 9)",
    ),
]


@pytest.mark.parametrize(("case", "text", "env", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_a_broken_config_is_refused_with_its_key_path(
    case: str, text: str, env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    path = tmp_path / "sfd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env)
    assert caught.value.lines() == [f"{path}: {expected}"]


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(
    ("case", "text", "env", "expected"), BROKEN[:12], ids=[b[0] for b in BROKEN[:12]]
)
def test_check_config_and_run_exit_2_naming_the_file_and_key(
    command: str,
    case: str,
    text: str,
    env: dict[str, str],
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DECATHLON_API_KEY", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "sfd.toml"
    path.write_text(
        f'[daemon]\ndatabase = "{tmp_path / "sfd.db"}"\n' * ("[daemon]" not in text) + text
    )
    assert main(["--config", str(path), command]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {expected}" in err.splitlines()
    assert not (tmp_path / "sfd.db").exists(), "nothing may start on a broken config"


def test_every_problem_is_reported_at_once() -> None:
    text = STORE + CHANNEL.replace("store = 1", "store = 9") + CHANNEL
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "sfd.toml", {})
    assert caught.value.lines() == [
        "sfd.toml: channels[0].store: no store with id 9 in [[stores]]",
        "sfd.toml: channels[0].settings.api_key: environment variable DECATHLON_API_KEY is not set",
        "sfd.toml: channels[1].name: duplicate name 'decathlon'",
        "sfd.toml: channels[1].settings.api_key: environment variable DECATHLON_API_KEY is not set",
    ]


def test_the_real_process_refuses_a_broken_config_and_starts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "sfd.toml"
    path.write_text(f'[daemon]\ndatabase = "{tmp_path / "sfd.db"}"\nlisten = 8642\n')
    result = run_cli(path, "run")
    assert result.returncode == 2
    assert result.stderr == f"{path}: daemon.listen: expected a string, got an integer\n"
    assert result.stdout == ""
    assert not (tmp_path / "sfd.db").exists()


def test_no_config_at_all_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SFD_CONFIG", raising=False)
    assert main(["check-config"]) == 2
    assert capsys.readouterr().err == (
        "sfd: no config given: use --config FILE or set SFD_CONFIG\n"
    )


def test_sfd_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "from-env.toml"
    path.write_text(STORE)
    monkeypatch.setenv("SFD_CONFIG", str(path))
    assert main(["check-config"]) == 0
    assert f"sfd: {path} is valid: 1 stores, 0 channels, 0 shops" in capsys.readouterr().err


def test_the_operations_worker_settings_have_defaults_and_can_be_set() -> None:
    default = parse_config(STORE, "sfd.toml", {}).daemon
    assert (default.operation_concurrency, default.operation_max_age, default.confirm_delay) == (
        4,
        48 * 3600,
        60,
    )
    tuned = parse_config(
        STORE + '[daemon]\noperation_concurrency = 2\noperation_max_age = "12h"\n'
        'confirm_delay = "30s"\n',
        "sfd.toml",
        {},
    ).daemon
    assert (tuned.operation_concurrency, tuned.operation_max_age, tuned.confirm_delay) == (
        2,
        12 * 3600,
        30,
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(STORE + "[daemon]\noperation_concurrency = 0\n", "sfd.toml", {})
    assert caught.value.lines() == [
        "sfd.toml: daemon.operation_concurrency: expected 1 or more, got 0"
    ]
