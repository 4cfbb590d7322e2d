"""The decider. Tools use it only through this root: the sticky table's value format
(:class:`~services.decider.units.Assignment`), which ``bench.sticky_memory`` stores."""

from services.decider.units import Assignment, assignment_of

__all__ = ["Assignment", "assignment_of"]
