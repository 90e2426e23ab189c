"""Every number quoted in README.md and docs/ matches the committed summary of the run behind it.

Each analysis or benchmark script writes ``analyses/summaries/<script>.json`` (or
``benchmarks/summaries/``). A doc quotes a number with a marker naming its summary and key,
``3.47<!--analyses/x:values.S|.2f-->`` (invisible in rendered Markdown); ``analyses/fill_docs.py``
writes every marked number from its summary, and the test below fails while any differs, so a
re-run that moved the data, or a hand edit, fails CI. Committed figures are stamped with the
sha256 of their summary, so a figure not redrawn after a re-run fails too.

To add a number to the docs: make the script put it in its summary, write the marker, run
``python analyses/fill_docs.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from _scripts import load_script

from gradcomp import summary

ROOT = Path(__file__).resolve().parents[1]
fill_docs = load_script("analyses/fill_docs.py")
SUMMARY_DIRS = (ROOT / "analyses" / "summaries", ROOT / "benchmarks" / "summaries")

#: figures whose stamp is required (drawn by scripts that write summaries)
STAMPED = (
    "figures/ncnet_mechanism.png",
    "figures/ncnet_mechanism_supp1.png",
    "figures/ncnet_mechanism_supp2.png",
    "figures/lora_rank.png",
    "figures/ncnet_capacity.png",
    "figures/ncnet_competition.png",
    "figures/ncnet_family_screen.png",
    "figures/phase_diagram.png",
    "figures/convac_design.png",
)


S_SCREEN = "analyses/summaries/ncnet_family_screen.json"


def _summaries() -> list[Path]:
    return sorted(p for d in SUMMARY_DIRS if d.exists() for p in d.glob("*.json"))


@pytest.mark.parametrize("path", _summaries(), ids=lambda p: p.name)
def test_committed_summaries_are_well_formed(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["command"].startswith("python ") and doc["run_id"] and "values" in doc
    if "timings" in doc:
        assert doc["machine"]["cpu"] and doc["machine"]["logical_cores"]
        assert "load_1min_start" in doc and "load_1min_end" in doc


@pytest.mark.parametrize("png", sorted((ROOT / "figures").glob("*.png")), ids=lambda p: p.name)
def test_committed_figures_match_their_summary(png: Path) -> None:
    stamp = summary.read_stamp(png)
    rel = png.relative_to(ROOT).as_posix()
    if rel in STAMPED:
        assert stamp, f"{rel} carries no summary stamp: redraw it with its figures/ script"
    if not stamp:
        return
    source = ROOT / stamp[summary.KEY_PATH]
    assert source.exists(), f"{rel} was drawn from {source}, which is not committed"
    assert summary.sha256(source) == stamp[summary.KEY_SHA], (
        f"{rel} is stale: {stamp[summary.KEY_PATH]} changed since it was drawn; redraw it"
    )


def test_family_screen_table_in_docs_is_the_committed_one() -> None:
    screen = load_script("analyses/ncnet_family_screen.py")
    table = screen.markdown_table(summary.read(S_SCREEN)["values"])
    assert table in (ROOT / "docs" / "ncnet.md").read_text(encoding="utf-8")


# --- the summary machinery itself ------------------------------------------------------------


def test_write_rounds_and_read_round_trips(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "s.json"
    digest = summary.write(
        path,
        {"x": 3.14159265, "v": np.array([1.0, np.nan, -2.123456]), "n": 7, "ok": True},
        run_id="r1",
        argv=["analyses/x.py", "--tiny"],
        timings={"wall_s": 12.345},
        load_start=0.5,
    )
    doc = summary.read(path)
    assert doc["values"] == {"x": 3.142, "v": [1.0, None, -2.123], "n": 7, "ok": True}
    assert doc["command"] == "python analyses/x.py --tiny" and doc["run_id"] == "r1"
    assert doc["timings"] == {"wall_s": 12.3} and doc["load_1min_start"] == 0.5
    assert doc["machine"]["logical_cores"] >= 1
    assert digest == summary.sha256(path)


def test_stamp_detects_a_stale_figure(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    summary.write(path, {"x": 1.0}, run_id="r1")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = tmp_path / "f.png"
    summary.savefig(fig, png, path, dpi=20)
    summary.savefig(fig, tmp_path / "f.pdf", path)
    plt.close(fig)
    stamp = summary.read_stamp(png)
    assert stamp[summary.KEY_SHA] == summary.sha256(path)
    summary.write(path, {"x": 1.5}, run_id="r2")  # a re-run
    assert stamp[summary.KEY_SHA] != summary.sha256(path)


def test_source_of_refuses_a_dataset_from_another_run(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    summary.write(path, {}, run_id="new")
    assert summary.source_of(summary.dataset_attrs(path, "new")) == path
    with pytest.raises(ValueError, match="from run new, the dataset from run old"):
        summary.source_of(summary.dataset_attrs(path, "old"))
    with pytest.raises(ValueError, match="names no summary"):
        summary.source_of({})


# --- numbers marked with their source (analyses/fill_docs.py) -----------------------------------


@pytest.mark.parametrize("doc", fill_docs.DOCS)
def test_marked_numbers_equal_their_summaries(doc: str) -> None:
    """``value<!--analyses/x:key-->`` in a doc is what ``fill_docs.py`` writes from the summary."""
    text = (ROOT / doc).read_text()
    filled = summary.fill(text)
    stale = [
        f"{a.group(0)} != {b.group(0)}"
        for a, b in zip(summary.MARKER.finditer(text), summary.MARKER.finditer(filled), strict=True)
        if a.group(0) != b.group(0)
    ]
    assert not stale, f"{doc}: run python analyses/fill_docs.py; stale: {stale[:5]}"


def test_fill_rewrites_a_stale_number(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "analyses" / "summaries"
    folder.mkdir(parents=True)
    (folder / "x.json").write_text(json.dumps({"a": {"lr=0.1,n=3": {"S": -2.5}}, "k": [1, 2]}))
    monkeypatch.setattr(summary, "ROOT", tmp_path)
    text = "S = 3.0<!--analyses/x:a.lr=0.1,n=3.S|+.2f--> at 9<!--analyses/x:k-->"
    assert (
        summary.fill(text)
        == "S = −2.50<!--analyses/x:a.lr=0.1,n=3.S|+.2f--> at 1/2<!--analyses/x:k-->"
    )
    with pytest.raises(KeyError):
        summary.fill("0<!--analyses/x:a.nope-->")
