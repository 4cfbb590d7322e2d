"""The local stack: Kafka (KRaft, from Maven Central jars), Redis and the product's
services as plain processes, for ``mab up/down/status``, the test fixtures and the
benchmarks.

Why not Docker: the target machines have no Docker engine, so ``mab up`` and the test
fixtures start real processes instead, each tracked so that only what we started is ever
stopped (:mod:`~deploy.stack.process`).

Two modes share all code (:mod:`~deploy.stack.config`): the product's stack in
``.state/``, persistent, on the ``MAB_*_PORT`` ports; and throwaway stacks in a temp dir
on free ports, without persistence, torn down after a test session or a benchmark.

One concern per module; import a name from the module that owns it:

* :mod:`~deploy.stack.errors`: :class:`StackError`, the one failure a person acts on.
* :mod:`~deploy.stack.ports`: the ports, their variables, the busy-port checks.
* :mod:`~deploy.stack.config`: the repository's folders and :class:`StackConfig`.
* :mod:`~deploy.stack.process`: pid files, argv records, logs; start and stop safely.
* :mod:`~deploy.stack.secrets`: admin key, read key, Redis password; who gets which.
* :mod:`~deploy.stack.jars`: the Kafka jars from Maven Central, cached.
* :mod:`~deploy.stack.kafka_broker`: the single-node KRaft broker.
* :mod:`~deploy.stack.topics`: creating the product's topics (local or managed Kafka).
* :mod:`~deploy.stack.redis_server`: ``redis-server`` with its password file.
* :mod:`~deploy.stack.redis_cluster`: a local Redis Cluster for tests.
* :mod:`~deploy.stack.services`: the registry of the processes ``mab up`` runs.
* :mod:`~deploy.stack.scale`: how many instances of each, remembered in ``scale.json``.
* :mod:`~deploy.stack.status`: the rows of ``mab status``.
* :mod:`~deploy.stack.local`: :class:`LocalStack` and :func:`throwaway_stack`, which
  drive all of the above in dependency order.
"""
