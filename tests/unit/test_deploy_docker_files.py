"""The Dockerfiles, read offline (no Docker engine needed): multi-stage, slim, non-root,
one build recipe for all, and every image holds the code its command imports."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.fixtures.deploy_files import (
    FIRST_PARTY,
    REPO,
    Dockerfile,
    decider_bind_host,
    dockerfiles,
    image_contains,
    imports_of,
    is_stdlib,
    module_file,
)

pytestmark = pytest.mark.unit

IMAGES = dockerfiles()
#: Import names that only an optional dependency group provides.
EXTRA_OF = {
    "fastapi": "services",
    "uvicorn": "services",
    "granian": "services",
    "starlette": "services",
    "faststream": "services",
    "streamlit": "dashboard",
    "pandas": "dashboard",
    "altair": "dashboard",
    "locust": "bench",
}
#: Import names the core dependencies provide (pyproject [project].dependencies and what
#: they pull in: typer brings rich, pydantic brings typing_extensions and pydantic_core
#: (its validation engine, pinned by pydantic), redis[hiredis] brings hiredis).
CORE_IMPORTS = frozenset(
    {
        "pydantic",
        "pydantic_core",
        "pydantic_settings",
        "orjson",
        "msgspec",
        "numpy",
        "typer",
        "rich",
        "redis",
        "hiredis",
        "confluent_kafka",
        "granian",
        "pyarrow",
        "prometheus_client",
        "httpx",
        "typing_extensions",
        # The SDK's distribution (clients/python), a core dependency the build installs.
        "mab_client",
    }
)


def test_every_service_has_its_own_image() -> None:
    assert set(IMAGES) >= {
        "decider",
        "reward-consumer",
        "projector",
        "dashboard",
        "demo-traffic",
        "tools",
        "load-tester",
    }


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_multi_stage_slim_and_non_root(name: str) -> None:
    image = IMAGES[name]
    assert [s.name for s in image.stages] == ["build", "runtime"]
    base = image.args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-[a-z]+)?", base), base
    assert all(s.base == "${PYTHON_IMAGE}" for s in image.stages)
    runtime = image.runtime
    # The runtime stage gets the venv from the build stage and never runs pip or uv.
    assert runtime.copies_from == ["build"]
    assert not any(re.search(r"\b(pip|uv)\b", r) for r in runtime.runs)
    assert runtime.user is not None
    uid = runtime.user.split(":")[0]
    assert uid.isdigit(), "numeric USER so Kubernetes runAsNonRoot can verify it"
    assert int(uid) >= 1000
    assert runtime.cmd, "every image has a default command"


def test_build_stage_is_the_same_recipe_everywhere() -> None:
    """Only the ``--extra`` flags differ between images: one way to build, one lock file."""

    def recipe(image: Dockerfile) -> list[str]:
        build = image.stages[0]
        runs = [re.sub(r"\s*--extra[ =][a-z0-9_-]+", "", r) for r in build.runs]
        return [*runs, *(f"{s}->{d}" for s, d in build.copies)]

    recipes = {name: recipe(image) for name, image in IMAGES.items()}
    first = next(iter(recipes.values()))
    assert all(r == first for r in recipes.values()), recipes
    assert any("uv sync --frozen" in r for r in first), "installs exactly what uv.lock pins"
    assert "pyproject.toml->./" in first
    assert "uv.lock->./" in first


def test_extras_exist_in_pyproject() -> None:
    extras = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    for name, image in IMAGES.items():
        assert image.extras <= extras, f"{name}: unknown extras {image.extras - extras}"
        assert "dev" not in image.extras, f"{name}: test tools do not belong in an image"


def _copied_python_files(image: Dockerfile) -> list[str]:
    files: list[str] = []
    for source, _ in image.runtime.copies:
        path = REPO / source
        assert path.exists(), f"{image.path}: COPY {source}: no such path"
        found = [path] if path.is_file() else sorted(path.rglob("*.py"))
        files.extend(str(p.relative_to(REPO)) for p in found if p.suffix == ".py")
    return files


def _entry_file(cmd: list[str]) -> str:
    """The repo file an image's command runs."""
    if cmd[:2] == ["python", "-m"]:
        mod = cmd[2]
        found = module_file(mod) or module_file(f"{mod}.__main__")
        main = module_file(f"{mod}.__main__")
        return main or found or f"<no module {mod}>"
    if cmd[0] == "uvicorn":
        return module_file(cmd[1].split(":")[0]) or f"<no module {cmd[1]}>"
    if cmd[:2] == ["streamlit", "run"] or cmd[:2] == ["locust", "-f"]:
        return cmd[2]
    raise AssertionError(f"unknown command form {cmd}")


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_holds_everything_its_code_imports(name: str) -> None:
    """Every first-party import of the copied code is copied too, and every third-party
    import is installed (core dependency, or an extra the build installs)."""
    image = IMAGES[name]
    entry = _entry_file(image.runtime.cmd)
    assert (REPO / entry).is_file(), entry
    assert image_contains(image, entry), f"{name}: CMD runs {entry}, which is not copied"
    problems: set[str] = set()
    for rel in _copied_python_files(image):
        for dotted in sorted(imports_of(REPO / rel)):
            top = dotted.split(".")[0]
            if is_stdlib(dotted):
                continue
            if top in FIRST_PARTY:
                target = module_file(dotted)
                if target is not None and not image_contains(image, target):
                    problems.add(f"{rel} imports {dotted} ({target} not copied)")
            elif top in EXTRA_OF:
                if EXTRA_OF[top] not in image.extras:
                    problems.add(f"{rel} imports {top}: needs --extra {EXTRA_OF[top]}")
            elif top not in CORE_IMPORTS:
                problems.add(f"{rel} imports {top}: not a known dependency")
    assert not problems, "\n".join(sorted(problems))


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_build_context_keeps_what_the_image_copies(name: str) -> None:
    """.dockerignore must not exclude a copied path (the build would fail late)."""
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for stage in IMAGES[name].stages:
        for source, _ in stage.copies:
            top = Path(source).parts[0]
            assert top not in ignored, f"{name}: COPY {source} but .dockerignore drops {top}"


def test_decider_image_serves_beyond_the_container() -> None:
    """The decider's default bind address is loopback; its image sets MAB_HOST=0.0.0.0 so
    that `docker run` with a published port reaches it."""
    runtime = IMAGES["decider"].runtime
    assert runtime.env["MAB_HOST"] == "0.0.0.0"
    assert decider_bind_host(runtime.env, runtime.cmd) == "0.0.0.0"
