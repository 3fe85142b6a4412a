"""edge-agent, the device daemon: installs signed bundles and serves them over the Open Inference Protocol.

Layout: ``store`` (versions on disk, atomic activation) walks ``update`` (the state table) and
checks with ``smoke``; ``runtimes`` load models; ``repository`` keeps one loaded version per model
and hot-swaps it; ``batching`` schedules executions; ``dataplane`` is live/ready/metadata/infer over
``infer_type``; ``http`` is the transport; ``metrics``, ``stats`` and ``drift`` observe;
``service`` wires it all and ``cli`` is ``edge-agent``. ``sync`` talks to the fleet.
"""
