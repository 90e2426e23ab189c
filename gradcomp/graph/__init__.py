"""Capacity as a graph: tensor-network min-cut bounds and task–unit competition graphs.

* :mod:`~gradcomp.graph.convac`, :mod:`~gradcomp.graph.mincut`: a tree ConvAC, its coefficient
  tensor, and the min-cut bound on the rank of its matricizations (Levine, Yakira, Cohen,
  Shashua, arXiv 1704.01552).
* :mod:`~gradcomp.graph.capacity`: the shared-channel capacity between two heads.
* :mod:`~gradcomp.graph.competition`: which hidden units the tasks fight over.
"""

from gradcomp.graph.capacity import capacity_coord, lora_graph, ncnet_graph, shared_capacity
from gradcomp.graph.competition import competition, competition_graph, unit_shares
from gradcomp.graph.convac import ConvAC, coefficient_tensor, matricization_rank
from gradcomp.graph.mincut import blocks, convac_graph, interleaved, left_right, min_cut_bound

__all__ = [
    "ConvAC",
    "blocks",
    "capacity_coord",
    "coefficient_tensor",
    "competition",
    "competition_graph",
    "convac_graph",
    "interleaved",
    "left_right",
    "lora_graph",
    "matricization_rank",
    "min_cut_bound",
    "ncnet_graph",
    "shared_capacity",
    "unit_shares",
]
