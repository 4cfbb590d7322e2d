"""Fixtures of the fault-injection tests: private stacks that may be stopped and wiped."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.stack.config import StackConfig
from deploy.stack.local import LocalStack

#: Makes a private Kafka/Redis stack; ``persistent_redis`` runs Redis with AOF as in
#: production, so a stopped Redis comes back with its data.
StackFactory = Callable[[bool], LocalStack]


@pytest.fixture
def private_stack(tmp_path: Path) -> Iterator[StackFactory]:
    """A stack of this test alone: it gets stopped, restarted or wiped, and nobody else
    notices. The shared broker and Redis are never touched by a fault."""
    stacks: list[LocalStack] = []

    def make(persistent_redis: bool = False) -> LocalStack:
        config = StackConfig.throwaway(tmp_path)
        if persistent_redis:
            config = dataclasses.replace(config, persistent=True)
        stack = LocalStack(config, services=[])
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.down()
            shutil.rmtree(stack.config.run_dir, ignore_errors=True)
