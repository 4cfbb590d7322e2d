"""Audit and off-policy evaluation of one experiment's event log.

Shared by the ``mab`` CLI (``mab audit export``, ``mab evaluate``) and the decider's
``GET /experiments/{id}/evaluate`` (the dashboard's off-policy section), so neither
imports the other. Everything but :mod:`offpolicy.reader` (Kafka) and
:mod:`offpolicy.export` (files) is pure: the log model and join (:mod:`offpolicy.log`),
the replay of the target policy over the logged history (:mod:`offpolicy.target`), the
estimators (:mod:`offpolicy.estimators`) and their composition
(:mod:`offpolicy.evaluate`). The method and its assumptions:
``docs/off-policy-evaluation.md``.
"""
