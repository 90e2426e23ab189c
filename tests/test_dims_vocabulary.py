"""The names in ``gradcomp.dims`` are the on-disk vocabulary: saved Datasets use these strings,
so each is pinned here (renaming a constant must not rename a stored dimension or variable)."""

from __future__ import annotations

from gradcomp import _cf, dims
from gradcomp.chsh import SHIFT

ON_DISK = {
    "STEP": "step",
    "TASK": "task",
    "TASK_J": "task_j",
    "LAYER": "layer",
    "UNIT": "unit",
    "PARAM": "param",
    "SEED": "seed",
    "ALICE": "alice",
    "BOB": "bob",
    "WIDTH": "width",
    "RANK": "rank",
    "FREQUENCY": "frequency",
    "LAG": "lag",
    "OWN": "own",
    "ANALYSIS": "analysis",
    "MARGINAL": "marginal",
    "LR": "lr",
    "FEATURE": "feature",
    "PROFILE": "profile",
    "BLOCK": "block",
    "LEVEL": "level",
    "ALL": "all",
    "ALL_IS": "layer_all",
    "LOSS": "loss",
    "GRAM": "gram",
    "GRAD_NORM": "grad_norm",
    "COSINE": "cosine",
    "UNIT_GRAM": "unit_gram",
    "GRAD": "grad",
    "OUTCOME_A": "a",
    "OUTCOME_B": "b",
    "C": "C",
    "S": "S",
    "DELTA": "delta",
    "CBD_MARGIN": "cbd_margin",
    "SE": "_se",
    "LO": "_lo",
    "HI": "_hi",
}


def test_names_are_the_stored_strings() -> None:
    assert {k: getattr(dims, k) for k in ON_DISK} == ON_DISK
    assert (dims.OUTCOME_A, dims.OUTCOME_B) == _cf.OUTCOMES
    assert (dims.SE, dims.LO, dims.HI) == _cf.COMPANIONS
    assert SHIFT == dims.MARGINAL


def test_bounded_labels() -> None:
    assert dims.bounded("r", "lagged correlation") == {
        "r": ("lagged correlation", "1"),
        "r_lo": ("lagged correlation, lower bound", "1"),
        "r_hi": ("lagged correlation, upper bound", "1"),
    }
    assert dims.bounded("information", "information (plug-in)", "bit", short="info") == {
        "information": ("information (plug-in)", "bit"),
        "information_lo": ("info, lower bound", "bit"),
        "information_hi": ("info, upper bound", "bit"),
    }
