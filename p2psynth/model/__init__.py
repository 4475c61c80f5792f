"""The global model: one graphical model fitted to every member's noisy marginals.

Modules, in the order data flows through them:

- ``junction_tree``: triangulates the graph of measured attribute sets and
  arranges its cliques in a tree, rejecting trees above the memory caps.
- ``inference``: log-space sum-product message passing on that tree.
- ``estimation``: ``fit_model`` combines the measurements and fits clique
  potentials by mirror descent (Private-PGM's estimator, in numpy).
- ``graphical_model``: ``GraphicalModel`` with exact ``project``, conditioning,
  canonical ``to_bytes`` / ``from_bytes`` and a content-hash ``model_id``.
- ``sampling``: vectorized forward sampling through the tree.
- ``expansion``: ``Expansion`` maps a model fitted on grouped codes back to
  the schema's codes by the within-group shares of the 1-way counts.
"""

from p2psynth.model.estimation import (
    DEFAULT_MAX_CLIQUE_CELLS,
    DEFAULT_MAX_MEMORY_BYTES,
    FitSummary,
    fit_model,
)
from p2psynth.model.expansion import Expansion, starts_from_maps
from p2psynth.model.graphical_model import GraphicalModel
from p2psynth.model.junction_tree import JunctionTree, build_junction_tree

__all__ = [
    "DEFAULT_MAX_CLIQUE_CELLS",
    "DEFAULT_MAX_MEMORY_BYTES",
    "Expansion",
    "FitSummary",
    "GraphicalModel",
    "JunctionTree",
    "build_junction_tree",
    "fit_model",
    "starts_from_maps",
]
