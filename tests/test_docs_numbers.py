"""Every number quoted in README.md and docs/ matches the committed summary of the run behind it.

Each analysis or benchmark script writes ``analyses/summaries/<script>.json`` (or
``benchmarks/summaries/``); :data:`CLAIMS` lists, per quoted number, the doc file, the exact
text around it, the number as written, the summary and the key holding it, and a tolerance
(usually half a unit of the last printed digit). A claim fails when the sentence was edited
away, when the number in it changed, or when a re-run moved the data. Committed figures are
stamped with the sha256 of their summary, so a figure not redrawn after a re-run fails too.

To add a number to the docs: make the script put it in its summary, quote it, add a claim.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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
    "figures/ncnet_capacity.png",
    "figures/ncnet_competition.png",
    "figures/ncnet_family_screen.png",
    "figures/phase_diagram.png",
    "figures/convac_design.png",
)


@dataclass(frozen=True)
class Claim:
    """One number in a doc: where it is, what it says, and where the data hold it."""

    doc: str  # path from the repository root
    snippet: str  # exact text containing the number (whitespace runs compare as one space)
    number: str  # the number as written in the snippet
    summary: str  # the summary file, from the repository root
    key: tuple[str | int, ...]  # path into the summary's JSON
    tol: float  # |number − value| allowed
    scale: float = 1.0  # the doc shows value × scale (100 for a percentage)


S_CAP = "analyses/summaries/ncnet_capacity.json"
S_SCREEN = "analyses/summaries/ncnet_family_screen.json"
S_CLI = "benchmarks/summaries/ncnet_cli.json"

SEL = ("values", "families", "A{x1, x1 ^ x2} B{x2, x1 ^ x3}")  # selected by the screen's rule
DEF = ("values", "families", "A{x1, x1 ^ x2} B{x1, x1 ^ x3}")  # the default family
# half a unit of the last printed digit, plus the summary's own rounding (4 significant digits)
R2 = 0.0051  # two decimals as printed

R3 = 0.00051  # three decimals as printed


def _row(doc: str, text: str, summary_file: str, keys: list[tuple[str | int, ...]], tol: float):
    """Claims for a table row: the numbers of ``text`` in order, one key each."""
    numbers = re.findall(r"[−+]?\d+\.\d+", text)
    assert len(numbers) == len(keys), (text, numbers)
    return tuple(
        Claim(doc, text, n, summary_file, k, tol) for n, k in zip(numbers, keys, strict=True)
    )


CLAIMS: tuple[Claim, ...] = (
    # (the capacity table and the README caption are marked numbers: analyses/fill_docs.py)
    # the main job's wall time (README set-up, docs/ncnet.md)
    *(
        Claim(doc, text, number, S_CLI, key, tol)
        for doc, text in (
            (
                "README.md",
                "at 291.6 s (median of 2 runs) on the shared 2-core AMD EPYC VM at a 1-minute "
                "load of 13.65–16.12",
            ),
            (
                "docs/ncnet.md",
                "at 291.6 s, median of 2 runs, on the shared 2-core AMD EPYC VM at a 1-minute "
                "load of 13.65–16.12",
            ),
        )
        for number, key, tol in (
            ("291.6", ("timings", "wall_s_median"), 0.05),
            ("13.65", ("load_1min_start",), 0.005),
            ("16.12", ("load_1min_end",), 0.005),
        )
    ),
    # (docs/graph.md, the README's throughput table, scale-out paragraph and LoRA section, and
    # docs/scaleout.md and docs/lora.md quote marked numbers: analyses/fill_docs.py)
    # the family screen (README NCnet section and docs/ncnet.md)
    Claim("README.md", "14 of 34 families qualify", "14", S_SCREEN, ("values", "n_qualifying"), 0),
    Claim("README.md", "14 of 34 families qualify", "34", S_SCREEN, ("values", "n_families"), 0),
    Claim("README.md", "(peak S +3.78 at n = 3)", "+3.78", S_SCREEN, (*SEL, "S", 2), R2),
    Claim("README.md", "the default ranks second (+3.77)", "+3.77", S_SCREEN, (*DEF, "S", 2), R2),
    Claim(
        "docs/ncnet.md", "14 of 34 families qualify", "14", S_SCREEN, ("values", "n_qualifying"), 0
    ),
    Claim("docs/ncnet.md", "S = +3.78 [+3.72, +3.83]", "+3.78", S_SCREEN, (*SEL, "S", 2), R2),
    Claim("docs/ncnet.md", "S = +3.78 [+3.72, +3.83]", "+3.72", S_SCREEN, (*SEL, "S_lo", 2), R2),
    Claim("docs/ncnet.md", "S = +3.78 [+3.72, +3.83]", "+3.83", S_SCREEN, (*SEL, "S_hi", 2), R2),
    Claim(
        "docs/ncnet.md", "second with +3.77 [+3.72, +3.82]", "+3.77", S_SCREEN, (*DEF, "S", 2), R2
    ),
    Claim(
        "docs/ncnet.md",
        "second with +3.77 [+3.72, +3.82]",
        "+3.72",
        S_SCREEN,
        (*DEF, "S_lo", 2),
        R2,
    ),
    Claim(
        "docs/ncnet.md",
        "second with +3.77 [+3.72, +3.82]",
        "+3.82",
        S_SCREEN,
        (*DEF, "S_hi", 2),
        R2,
    ),
    Claim("docs/ncnet.md", "at n = 1 only (−4 vs −2)", "−4", S_SCREEN, (*SEL, "S", 0), R2),
    Claim("docs/ncnet.md", "at n = 1 only (−4 vs −2)", "−2", S_SCREEN, (*DEF, "S", 0), R2),
)


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _number(text: str) -> float:
    return float(text.replace("−", "-").replace(",", "").replace("+", ""))


def _lookup(doc: dict, key: tuple[str | int, ...]) -> float:
    value: object = doc
    for k in key:
        value = value[k]  # type: ignore[index]
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    return float(value)


@pytest.mark.parametrize(
    "claim", CLAIMS, ids=lambda c: f"{c.doc}:{c.number}:{'.'.join(map(str, c.key))}"
)
def test_claim_matches_its_summary(claim: Claim) -> None:
    text = _normal((ROOT / claim.doc).read_text(encoding="utf-8"))
    snippet = _normal(claim.snippet)
    assert snippet in text, f"{claim.doc} no longer says: {snippet!r}"
    assert claim.number in snippet, f"the claim's number {claim.number!r} is not in its snippet"
    value = _lookup(summary.read(claim.summary), claim.key) * claim.scale
    assert abs(_number(claim.number) - value) <= claim.tol, (
        f"{claim.doc} says {claim.number}, {claim.summary} {claim.key} holds {value} "
        f"(tolerance {claim.tol}): re-run or fix the doc"
    )


@pytest.mark.parametrize("claim", [c for c in CLAIMS if c.key[0] == "timings"], ids=str)
def test_timings_quote_machine_and_load(claim: Claim) -> None:
    doc = summary.read(claim.summary)
    assert doc.get("machine") and doc.get("load_1min_start") is not None
    assert "load" in claim.snippet, "a timing in the docs must quote the machine's load"


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


def test_a_claim_with_a_wrong_number_fails(tmp_path: Path, monkeypatch) -> None:
    doc, data = tmp_path / "d.md", tmp_path / "s.json"
    doc.write_text("S peaks at\n+3.79 [+3.76, +3.81].")
    summary.write(data, {"S": 3.74}, run_id="r")
    monkeypatch.setattr(summary, "ROOT", tmp_path)
    claim = Claim(str(doc), "peaks at +3.79 [", "+3.79", str(data), ("values", "S"), 0.005)
    with pytest.raises(AssertionError, match="re-run or fix the doc"):
        test_claim_matches_its_summary(claim)
    ok = Claim(str(doc), "peaks at +3.79 [", "+3.79", str(data), ("values", "S"), 0.06)
    test_claim_matches_its_summary(ok)


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
