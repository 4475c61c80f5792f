"""Simulated p2psynth networks: real node processes on one machine, a timeline of events, a report.

Modules, in the order a run uses them:

- ``scenario``: the TOML scenario format and its strict loader.
- ``splits``: one real table split into the nodes' private tables.
- ``nodes``: node folders, members file and bootstrap lists (the topology).
- ``launch`` and ``partition``: starting node processes, directly on loopback
  or each in its own network namespace behind a relay that can cut links.
- ``releases``: seeded honest releases and misbehaving ones, made with a
  member's own key and ledger.
- ``runner``: the events, convergence waits and measurements of one run.
- ``quality``: each model sampled through the node API and compared with
  held-out real rows.
- ``report``: summary.md, measurements.csv, summary.json and plots.

``p2psynth.simulate.run_scenario`` is the entry point; ``p2psynth simulate``
calls it.
"""
