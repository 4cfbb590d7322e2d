"""The decider. Tools use it only through this root: the sticky table's value format
(:class:`~services.decider.units.Assignment`), which ``bench.sticky_memory`` stores, and
its projection from the decisions topic (:class:`~services.decider.sticky_table.
StickyTable`), which ``mab replay`` runs."""

from services.decider.sticky_table import StickyTable, StickyTableReport
from services.decider.units import Assignment, assignment_of

__all__ = ["Assignment", "StickyTable", "StickyTableReport", "assignment_of"]
