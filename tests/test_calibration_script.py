"""analyses/calibration.py: a quick run writes a summary with every key the docs quote."""

from __future__ import annotations

import json

from _scripts import ROOT, load_script

from gradcomp import summary


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out |= _leaves(v, key + ".") if isinstance(v, dict) else {key}
    return out


def test_quick_run_writes_the_same_keys_as_the_committed_summary(tmp_path) -> None:
    path = tmp_path / "calibration.json"
    script = load_script("analyses/calibration.py")
    assert script.main(["--quick", "--summary", str(path)]) == 0
    doc = json.loads(path.read_text())
    values = doc["values"]
    assert doc["command"].startswith("python analyses/calibration.py --quick")
    assert doc["timings"]["wall_s"] > 0 and "machine" in doc
    assert values["reps"] == 10 and values["chsh_reps"] == 50
    # every chsh model and n, every analyzer model
    fpr, cov = values["chsh"]["fpr"], values["chsh"]["coverage"]
    assert set(fpr) == set(script.CHSH_NULLS)
    assert all(set(v) == {"n20", "n50", "n200"} for v in fpr.values())
    assert set(cov) == set(script.CHSH_NON_NULLS)
    assert set(cov["delta02"]) == {"n20", "n200"}
    assert set(cov["degenerate_width1"]["n10"]) == {"S", "delta", "margin"}
    assert set(values["correlate"]["seed"]) == {*script.CORR_NULLS, *script.CORR_ALTS}
    assert set(values["lagged"]) == {"no_lead_rho0", "no_lead_rho05", "lead"}
    assert values["sensing"]["null"]["windows"] == 10
    # rates are rates
    rates = [
        summary.lookup(values, k)
        for k in _leaves(values)
        if k.rsplit(".", 1)[-1]
        in {
            "S",
            "delta",
            "margin",
            "n20",
            "n50",
            "n200",
            "excludes_0",
            "p_below_005",
            "coverage",
            "power",
            "false_onset",
        }
    ]
    assert rates and all(0.0 <= r <= 1.0 for r in rates)
    # the old code's block is there or says why not
    before = values["chsh_before"]
    assert "note" in before or set(before["fpr"]["S_regular"]) == {"n20", "n50", "n200"}
    # the quick run makes every key the committed summary has (so the docs' markers resolve)
    committed = summary.read(ROOT / "analyses/summaries/calibration.json")["values"]
    missing = _leaves(committed) - _leaves(values)
    if "note" in before:
        missing = {k for k in missing if not k.startswith("chsh_before.")}
    assert not missing, sorted(missing)
