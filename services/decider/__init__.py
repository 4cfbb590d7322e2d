"""The decider. Tools use it only through this root: the sticky table's value format
(:class:`~services.decider.units.Assignment`), which ``bench.sticky_memory`` stores, its
projection from the decisions topic (:class:`~services.decider.sticky_table.
StickyTable`), which ``mab replay`` runs, and the served app itself
(:func:`served_app`), which ``bench.decision_cost`` drives in process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.decider.sticky_table import StickyTable, StickyTableReport
from services.decider.units import Assignment, assignment_of

if TYPE_CHECKING:
    from services.decider.hot_path import DecisionFastPath

__all__ = ["Assignment", "StickyTable", "StickyTableReport", "assignment_of", "served_app"]


def served_app() -> DecisionFastPath:
    """A new instance of the ASGI app ``python -m services.decider`` serves, with its
    settings read from the environment when its lifespan starts. Imported on call: the
    tools that only need the sticky table do not load the web app."""
    from services.decider.app import create_asgi

    return create_asgi()
