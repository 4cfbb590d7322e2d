"""The projector: decisions, rewards and change points into per-hour and per-minute buckets.

What other packages may use (the CLI's replay, the benchmarks, the tests' wiring): the
processor (:class:`BucketProjection`, the pure projection the engine drives), its report,
the retention it keeps buckets for, the service (:class:`Projector`) and its settings.
Everything else is internal.
"""

from services.projector.consumer import Projector
from services.projector.processor import BucketProjection, ProjectionReport
from services.projector.projection import Retention
from services.projector.settings import ProjectorSettings

__all__ = ["BucketProjection", "ProjectionReport", "Projector", "ProjectorSettings", "Retention"]
