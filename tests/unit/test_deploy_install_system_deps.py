"""deploy/install_system_deps.sh offline: its JDK choice against a fake ``apt-cache`` on
PATH (the package lists of Debian 12, Debian 13 and Ubuntu 24.04, and ones with no JDK
new enough), and what it does without a JDK: through sudo it updates the lists, then
installs the chosen JDK with Maven and Redis; without root or sudo it prints the one
command to run. No package is installed and no system file is touched: ``apt-get``,
``sudo`` and ``id`` are fakes that only record their arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.deploy_files import REPO

pytestmark = pytest.mark.unit

SCRIPT = REPO / "deploy" / "install_system_deps.sh"

FAKE_APT_CACHE = """#!/bin/sh
# apt-cache policy PKG, answered from $FAKE_APT: lines "name=candidate" ("(none)": the
# name is known but has no candidate; a name not listed is unknown: no output).
[ "$1" = policy ] || exit 1
printf '%s\\n' "$FAKE_APT" | while IFS='=' read -r name version; do
  if [ "$name" = "$2" ]; then
    printf '%s:\\n  Installed: (none)\\n  Candidate: %s\\n  Version table:\\n' "$name" "$version"
  fi
done
"""
#: Records its call and succeeds (reads and drops any input, like tee would take it).
RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_LOG"
cat >/dev/null
"""
FAKE_ID = """#!/bin/sh
echo "${FAKE_UID:-1000}"
"""


def lists(**candidates: str) -> str:
    return "\n".join(f"{name.replace('_', '-')}={v}" for name, v in candidates.items())


DEBIAN_12 = lists(openjdk_17_jdk_headless="17.0.21.1+2-1~deb12u1", default_jdk_headless="2:1.17-74")
DEBIAN_13 = lists(
    openjdk_21_jdk_headless="21.0.9+10-1~deb13u1",
    openjdk_25_jdk_headless="(none)",
    default_jdk_headless="2:1.21-76",
)
UBUNTU_24_04 = lists(
    openjdk_17_jdk_headless="17.0.17+10-1~24.04",
    openjdk_21_jdk_headless="21.0.9+10-1~24.04",
    openjdk_25_jdk_headless="25.0.1+8-1~24.04",
    default_jdk_headless="2:1.21-75+exp1",
)


def run(
    tmp_path: Path,
    *args: str,
    apt: str,
    uid: int = 1000,
    tools: tuple[str, ...] = ("apt-get", "sudo"),
) -> subprocess.CompletedProcess[str]:
    """The script with PATH holding only the fakes and the few real tools it needs (so
    java, mvn and redis-server are missing, whatever this machine has)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fakes = {"apt-cache": FAKE_APT_CACHE, "id": FAKE_ID, **dict.fromkeys(tools, RECORDER)}
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for real in ("awk", "sed", "cat", "basename"):
        found = shutil.which(real)
        assert found is not None
        link = bin_dir / real
        if not link.exists():
            link.symlink_to(found)
    env = {
        "PATH": str(bin_dir),
        "FAKE_APT": apt,
        "FAKE_LOG": str(tmp_path / "calls.log"),
        "FAKE_UID": str(uid),
        "HOME": str(tmp_path),
    }
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize(
    ("apt", "chosen"),
    [
        (DEBIAN_12, "openjdk-17-jdk-headless"),
        (DEBIAN_13, "openjdk-21-jdk-headless"),  # 25 is known there but not installable
        (UBUNTU_24_04, "openjdk-25-jdk-headless"),
        (lists(default_jdk_headless="2:1.21-75"), "default-jdk-headless"),
        (lists(default_jdk_headless="1:1.17"), "default-jdk-headless"),
    ],
    ids=["debian-12", "debian-13", "ubuntu-24.04", "only-default-21", "only-default-17"],
)
def test_the_newest_available_jdk_of_at_least_17_is_chosen(
    tmp_path: Path, apt: str, chosen: str
) -> None:
    done = run(tmp_path, "choose-jdk", apt=apt)
    assert (done.returncode, done.stdout.strip()) == (0, chosen), done.stderr


@pytest.mark.parametrize(
    "apt",
    [
        lists(default_jdk_headless="2:1.11-72"),  # Debian 11: Java 11 only
        lists(openjdk_17_jdk_headless="(none)", default_jdk_headless="(none)"),
        "",  # empty package lists: a fresh image before apt-get update
    ],
    ids=["default-is-11", "no-candidates", "empty-lists"],
)
def test_no_jdk_new_enough_is_an_error_naming_the_packages_tried(tmp_path: Path, apt: str) -> None:
    done = run(tmp_path, "choose-jdk", apt=apt)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "no JDK >= 17" in done.stderr
    assert "openjdk-21-jdk-headless" in done.stderr


def test_through_sudo_it_updates_then_installs_the_chosen_jdk_maven_and_redis(
    tmp_path: Path,
) -> None:
    done = run(tmp_path, "stack", apt=DEBIAN_13)
    recorded = calls(tmp_path)
    installs = [c for c in recorded if "apt-get install" in c]
    assert installs == [
        "sudo apt-get install -y -qq --no-install-recommends "
        "openjdk-21-jdk-headless redis-server redis-tools maven"
    ], recorded
    assert recorded.index("sudo apt-get update -qq") < recorded.index(installs[0])
    assert recorded.count("sudo apt-get update -qq") == 1
    # The fakes installed nothing, so the script reports it cannot find Java afterwards.
    assert done.returncode == 1
    assert "installing: openjdk-21-jdk-headless" in done.stdout
    assert "update-alternatives --config java" in done.stderr


def test_without_root_or_sudo_it_prints_the_one_command_to_run(tmp_path: Path) -> None:
    done = run(tmp_path, "stack", apt=UBUNTU_24_04, tools=("apt-get",))
    assert done.returncode == 1
    assert calls(tmp_path) == []  # nothing attempted
    assert done.stderr.splitlines()[-1] == (
        "  apt-get update && apt-get install -y --no-install-recommends "
        "openjdk-25-jdk-headless redis-server redis-tools maven"
    )
    assert "not root (no sudo either)" in done.stderr


def test_the_full_mode_adds_the_test_tools(tmp_path: Path) -> None:
    run(tmp_path, apt=DEBIAN_12)
    (install,) = [c for c in calls(tmp_path) if "apt-get install" in c]
    assert install.endswith(
        "openjdk-17-jdk-headless redis-server redis-tools maven wrk chromium chromium-driver"
    )


def test_as_root_it_needs_no_sudo(tmp_path: Path) -> None:
    """uid 0: apt-get runs directly (the fake records it without ``sudo``)."""
    run(tmp_path, "stack", apt=DEBIAN_12, uid=0, tools=("apt-get", "tee", "chmod", "rm"))
    recorded = calls(tmp_path)
    assert "apt-get update -qq" in recorded
    assert any(c.startswith("apt-get install") for c in recorded)
    assert not any(c.startswith("sudo") for c in recorded)


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    done = run(tmp_path, "everything", apt=DEBIAN_12)
    assert done.returncode == 2
    assert "usage:" in done.stderr
    assert not os.path.exists(tmp_path / "calls.log")
