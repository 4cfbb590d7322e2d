"""The decider's HTTP API, one ``APIRouter`` per resource.

Each module owns its routes and the behaviour behind them; the resources it needs come
from :mod:`services.decider.runtime` as ``Annotated`` dependencies. The two hot routes'
functions (:func:`~services.decider.routes.decisions.serve_decision`,
:func:`~services.decider.routes.rewards.serve_reward`) are also called by the raw fast
path, so each behaviour has one implementation. :func:`services.decider.app.create_app`
includes the routers (a new resource is a new module here plus one line there).
"""
