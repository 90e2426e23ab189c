"""``benchmarks/record_overhead.py`` merges a run of some methods into the model's entry: the
methods it did not time keep their ratios and say which command timed them."""

from __future__ import annotations

from _scripts import load_script

overhead = load_script("benchmarks/record_overhead.py")


def _entry(command: str, ratio: dict, tasks: tuple[str, ...] = ("2", "8")) -> dict:
    return {"command": command, "plain_ms": dict.fromkeys(tasks, 1.0), "ratio": ratio}


def test_a_partial_run_keeps_the_other_methods_with_their_command() -> None:
    full = _entry("all", {"baseline loop": {"2": 1.7}, "rows every 1": {"2": 1.3}})
    part = _entry("rows", {"rows every 1": {"2": 1.1}})
    got = overhead.merged(full, part, [2, 8])
    assert got["ratio"] == {"baseline loop": {"2": 1.7}, "rows every 1": {"2": 1.1}}
    assert got["command"] == "rows" and got["earlier"] == {"baseline loop": "all"}
    # a second partial run keeps the first command of what it does not time again
    again = overhead.merged(got, _entry("rows2", {"rows every 1": {"2": 1.0}}), [2, 8])
    assert again["earlier"] == {"baseline loop": "all"}


def test_other_task_counts_or_a_full_run_replace_the_entry() -> None:
    full = _entry("all", {"baseline loop": {"2": 1.7}})
    other = _entry("t4", {"rows every 1": {"4": 1.2}}, ("4",))
    assert overhead.merged(full, other, [4]) == other
    assert overhead.merged(None, full, [2, 8]) == full
    assert overhead.merged(full, _entry("all2", {"baseline loop": {"2": 1.6}}), [2, 8])[
        "ratio"
    ] == {"baseline loop": {"2": 1.6}}
