"""The systemd unit shipped as sfd.service: required settings, verify, and security exposure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "sfd.service"
MAX_EXPOSURE = 1.5
NO_ANALYZE = "systemd-analyze is not installed on this machine; the unit is verified where it is"

REQUIRED_SETTINGS = [
    ("Unit", "After", "network-online.target"),
    ("Unit", "Wants", "network-online.target"),
    ("Service", "Type", "notify"),
    ("Service", "NotifyAccess", "main"),
    ("Service", "WatchdogSec", "60"),
    ("Service", "Restart", "on-failure"),
    ("Service", "RestartPreventExitStatus", "2"),
    ("Service", "TimeoutStopSec", "30"),
    ("Service", "DynamicUser", "yes"),
    ("Service", "StateDirectory", "sfd"),
    ("Service", "ConfigurationDirectory", "sfd"),
    ("Service", "UMask", "0077"),
    ("Service", "ProtectSystem", "strict"),
    ("Service", "ProtectHome", "yes"),
    ("Service", "PrivateTmp", "yes"),
    ("Service", "PrivateDevices", "yes"),
    ("Service", "NoNewPrivileges", "yes"),
    ("Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ("Service", "SystemCallFilter", "@system-service"),
    ("Service", "SystemCallArchitectures", "native"),
    ("Service", "ProtectKernelTunables", "yes"),
    ("Service", "ProtectKernelModules", "yes"),
    ("Service", "ProtectKernelLogs", "yes"),
    ("Service", "ProtectControlGroups", "yes"),
    ("Service", "RestrictNamespaces", "yes"),
    ("Service", "LockPersonality", "yes"),
    ("Service", "RestrictRealtime", "yes"),
    ("Service", "CapabilityBoundingSet", ""),
    # Beyond the list above, these bring the exposure down to its measured level.
    ("Service", "ProtectClock", "yes"),
    ("Service", "ProtectHostname", "yes"),
    ("Service", "ProtectProc", "invisible"),
    ("Service", "ProcSubset", "pid"),
    ("Service", "PrivateUsers", "yes"),
    ("Service", "MemoryDenyWriteExecute", "yes"),
    ("Service", "RestrictSUIDSGID", "yes"),
    ("Service", "RemoveIPC", "yes"),
    ("Service", "DevicePolicy", "closed"),
    ("Service", "KeyringMode", "private"),
]


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Every `Key=value` of a unit file by section, in order; keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside any section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(path: Path, section: str, key: str) -> list[str]:
    return [v for k, v in read_unit(path).get(section, []) if k == key]


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip(NO_ANALYZE)
    return found


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "LC_ALL": "C.UTF-8"}
    return subprocess.run(
        [systemd_analyze(), "--no-pager", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def runnable_copy(directory: Path, extra_lines: str = "") -> Path:
    """The unit, with ExecStart's binary swapped for one that exists here; all else identical."""
    executable = Path(sys.executable).with_name("sfd")
    if not os.access(executable, os.X_OK):
        executable = Path(sys.executable)
    text, count = re.subn(
        r"^ExecStart=\S+", f"ExecStart={executable}", UNIT.read_text(encoding="utf-8"), flags=re.M
    )
    assert count == 1, "the unit should have exactly one ExecStart= line"
    copy = directory / "sfd.service"
    copy.write_text(text + extra_lines, encoding="utf-8")
    return copy


def verify_complaints(unit: Path) -> tuple[int, list[str]]:
    """Exit status of `systemd-analyze verify`, and every output line that is about our unit.

    verify also reports on units it pulls in from the host, which depend on the machine,
    so lines that name neither our file nor sfd.service are left out.
    """
    result = analyze("verify", str(unit))
    lines = (result.stdout + result.stderr).splitlines()
    ours = [line for line in lines if "sfd.service" in line or str(unit.parent) in line]
    return result.returncode, ours


@pytest.mark.parametrize(
    ("section", "key", "expected"),
    REQUIRED_SETTINGS,
    ids=[f"{k}={v}" for _, k, v in REQUIRED_SETTINGS],
)
def test_unit_sets_each_required_setting(section: str, key: str, expected: str) -> None:
    assert expected in values(UNIT, section, key), (
        f"[{section}] {key}={expected} missing; found {values(UNIT, section, key)}"
    )


def test_unit_starts_sfd_run_with_the_etc_config() -> None:
    (exec_start,) = values(UNIT, "Service", "ExecStart")
    assert exec_start.split()[0] == "/usr/local/bin/sfd"
    assert "--config /etc/sfd/sfd.toml" in exec_start
    assert exec_start.split()[-1] == "run"


def test_unit_hands_secrets_over_as_credentials() -> None:
    credentials = values(UNIT, "Service", "LoadCredential")
    assert credentials, "no LoadCredential= line"
    assert "decathlon-api-key:/etc/sfd/credentials/decathlon-api-key" in credentials
    for credential in credentials:
        name, _, source = credential.partition(":")
        assert name, f"credential without a name: {credential!r}"
        assert "/" not in name, f"credential name {name!r} must not contain '/'"
        assert source.startswith("/etc/sfd/credentials/"), credential


def test_unit_forbids_privileged_and_resource_system_calls() -> None:
    filters = values(UNIT, "Service", "SystemCallFilter")
    assert "@system-service" in filters
    denied = {name for f in filters if f.startswith("~") for name in f[1:].split()}
    assert {"@privileged", "@resources"} <= denied


def test_unit_keeps_outbound_network_open_for_marketplaces() -> None:
    service = dict(read_unit(UNIT)["Service"])
    assert "IPAddressDeny" not in service
    assert service.get("PrivateNetwork", "no") == "no"


def test_unit_passes_systemd_analyze_verify_without_warnings(tmp_path: Path) -> None:
    returncode, complaints = verify_complaints(runnable_copy(tmp_path))
    assert complaints == []
    assert returncode == 0


def test_verify_check_catches_a_misspelt_setting(tmp_path: Path) -> None:
    # Guards the test above: a complaint about our file must not be filtered out.
    _, complaints = verify_complaints(runnable_copy(tmp_path, "ProtectSytem=strict\n"))
    assert any("ProtectSytem" in line for line in complaints), complaints


def test_unit_security_exposure_is_at_most_1_5() -> None:
    result = analyze("security", "--offline=yes", str(UNIT))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for sfd\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    exposure = float(match[1])
    print(f"systemd-analyze security exposure for sfd.service: {exposure}")
    assert exposure <= MAX_EXPOSURE
