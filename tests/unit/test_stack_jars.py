"""The Kafka jars: a missing tool names the one command that installs it, and a cache
folder counts as complete only for the pom it was resolved from (deploy/stack/jars.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.stack import jars
from deploy.stack.errors import StackError

pytestmark = pytest.mark.unit


def test_missing_java_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda cmd, *a, **k: None if cmd == "java" else real_which(cmd)
    )
    with pytest.raises(StackError) as info:
        jars.ensure_kafka_jars(cache_dir=tmp_path)
    # The one command that installs it (the script make up runs, as root or via sudo).
    command = f"bash {jars.SYSTEM_DEPS} stack"
    assert str(info.value).endswith(command)
    assert "`java` not found" in str(info.value)
    assert jars.SYSTEM_DEPS.is_file()


def test_missing_maven_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda cmd, *a, **k: None if cmd == "mvn" else "/x")
    with pytest.raises(StackError, match="`mvn` not found") as info:
        jars.ensure_kafka_jars(cache_dir=tmp_path)
    assert str(info.value).endswith(f"bash {jars.SYSTEM_DEPS} stack")


def test_the_pinned_version_is_read_from_the_pom(tmp_path: Path) -> None:
    assert jars.kafka_version().count(".") == 2
    pom = tmp_path / "pom.xml"
    pom.write_text("<project><properties></properties></project>")
    with pytest.raises(StackError, match=r"no <kafka\.version> property"):
        jars.kafka_version(pom)


def test_a_cache_is_complete_only_for_its_pom_and_with_every_jar(tmp_path: Path) -> None:
    """Scenario: a resolved folder, then a jar deleted, then the pom changed.
    We expect it to count as complete only in the first case (Maven runs again else)."""
    pom = tmp_path / "pom.xml"
    pom.write_text("<kafka.version>4.1.0</kafka.version>")
    libs = tmp_path / "libs"
    libs.mkdir()
    for name in ("a.jar", "b.jar"):
        (libs / name).write_bytes(b"")
    assert not jars._libs_complete(libs, pom)  # no marker: interrupted or not ours
    digest = jars._pom_digest(pom)
    (libs / jars.LIBS_MARKER).write_text(f"pom-sha256 {digest}\na.jar\nb.jar\n")
    assert jars._libs_complete(libs, pom)
    (libs / "b.jar").unlink()
    assert not jars._libs_complete(libs, pom)
    (libs / "b.jar").write_bytes(b"")
    pom.write_text("<kafka.version>4.2.0</kafka.version>")
    assert not jars._libs_complete(libs, pom)
