"""The Kafka broker's jars, resolved from Maven Central once and kept in ``.cache/``.

No Kafka tarball can be downloaded on the target machines, but Maven Central serves
``org.apache.kafka:kafka_2.13`` with its dependencies: ``deploy/kafka/pom.xml`` pins the
version and a logging binding, and Maven copies the runtime jars into a folder that the
broker's classpath points at. Later starts need no network and no Maven.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from deploy.stack.config import CACHE_DIR, REPO_ROOT
from deploy.stack.errors import StackError

KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
LIBS_MARKER = ".complete"

#: Installs Java 17+, Maven and redis-server (as root, or through sudo); prints the one
#: apt-get command to run when it can do neither.
SYSTEM_DEPS = REPO_ROOT / "deploy" / "install_system_deps.sh"
JAVA_FIX = f"install Java 17+ (and Maven, redis-server): bash {SYSTEM_DEPS} stack"
MVN_FIX = f"install Maven (and Java 17+, redis-server): bash {SYSTEM_DEPS} stack"


def kafka_version(pom: Path = KAFKA_POM) -> str:
    """The Kafka version pinned in the pom (``<kafka.version>``)."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if match is None:
        raise StackError(f"{pom} has no <kafka.version> property")
    return match.group(1)


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(f"`java` not found on PATH; {JAVA_FIX}")
    return java


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def _libs_complete(libs: Path, pom: Path) -> bool:
    """Complete = marker written by us for this exact pom, and every jar it lists present."""
    marker = libs / LIBS_MARKER
    if not marker.is_file():
        return False
    lines = [n for n in marker.read_text().splitlines() if n]
    if not lines or lines[0] != f"pom-sha256 {_pom_digest(pom)}":
        return False
    names = lines[1:]
    return bool(names) and all((libs / n).is_file() for n in names)


def ensure_kafka_jars(pom: Path = KAFKA_POM, cache_dir: Path = CACHE_DIR) -> Path:
    """Resolve the Kafka broker jars into ``.cache/kafka-libs-<version>`` once.

    Runs Maven only when the folder lacks the completion marker (or a jar it lists), into a
    temp folder renamed at the end, under a file lock, so an interrupted or concurrent run never
    leaves a half folder that looks complete. Later starts need no network.
    """
    require_java()
    libs = cache_dir / f"kafka-libs-{kafka_version(pom)}"
    if _libs_complete(libs, pom):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(f"`mvn` not found on PATH (needed once to fetch Kafka jars); {MVN_FIX}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / ".kafka-libs.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _libs_complete(libs, pom):
            return libs
        partial = Path(tempfile.mkdtemp(prefix=f"{libs.name}.", dir=cache_dir))
        try:
            proc = subprocess.run(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    "-DincludeScope=runtime",
                    f"-DoutputDirectory={partial}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            jars = sorted(p.name for p in partial.glob("*.jar"))
            if proc.returncode != 0 or not jars:
                tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
                raise StackError(
                    f"Maven could not resolve the Kafka jars (exit {proc.returncode}):\n{tail}"
                )
            (partial / LIBS_MARKER).write_text(
                "\n".join([f"pom-sha256 {_pom_digest(pom)}", *jars]) + "\n"
            )
            if libs.exists():
                shutil.rmtree(libs)
            partial.rename(libs)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
    return libs
