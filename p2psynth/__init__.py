"""p2psynth: decentralized synthetic data from differentially private marginals.

Architecture (one module or package per part)::

    private table --encoding(schema)--> integer codes
        --measurement--> noisy marginals (discrete Gaussian noise, zCDP rho)
        --ledger debit--> signed release (msgpack + Ed25519)
        --network: gossip announcement + sync pull--> every member
        --validation--> store (SQLite)
        --model: assemble all members' latest releases--> global model
        --sampling--> synthetic rows for local users (CLI, HTTP API, client)

- ``schema``, ``encoding``: the network's table definition and the
  conversion of CSV/Parquet rows to integer codes and back.
- ``accounting``, ``noise``: zCDP bookkeeping and the exact discrete
  Gaussian sampler over a cryptographically secure random source.
- ``measurement``: which marginals a node measures and how they are noised.
- ``release``: the signed, canonical wire format of a node's measurements.
- ``store``, ``ledger``: the node's SQLite file and its privacy budget ledger.
- ``model``: the estimator that fits one graphical model to many releases,
  and sampling from it.
- ``network``: py-libp2p host, gossip of announcements and the sync protocol.

A node never sends a row: only releases leave it.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Client pulls in httpx; import it only when asked for.
    if name == "Client":
        from p2psynth.client import Client

        return Client
    raise AttributeError(f"module 'p2psynth' has no attribute {name!r}")
