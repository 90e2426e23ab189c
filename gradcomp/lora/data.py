"""Real multilingual words from ``wordfreq`` and the two Alice and two Bob tasks defined on them.

Every word of the pool carries its language, its Zipf frequency (``wordfreq.zipf_frequency``:
log10 of occurrences per billion words) and its length. A task is a binary labelling of the pool
given by a short spec string:

- ``"lang:en,de"`` — 1 when the word's language is one of the listed codes (language
  identification between two groups of languages),
- ``"freq"`` or ``"freq:4.5"`` — 1 when the Zipf frequency is at least the threshold (default: the
  pool's median, so the classes are balanced): a frequency-band task;
  ``"freq:4.3-4.9"`` — frequent (Zipf ≥ 4.9) vs rare (Zipf < 4.3): words in the band between are
  left out of the pool (for every task), so the two classes are separated by a gap,
- ``"length"`` or ``"length:6"`` — 1 when the word has at least that many characters (default:
  the median),
- ``"script:cyrillic"`` — 1 when the word's first letter belongs to that Unicode script.

The project's reading of the paper's "multilingual multi-task training": Alice chooses between
``A1 = lang:en,de`` (Germanic vs Romance) and ``A2 = freq:4.3-4.9`` (frequent vs rare with a gap:
at the median split, ``freq``, a small CPU run stays at chance on held-out words); Bob between
``B1 = lang:en,fr`` and ``B2 = length``. Words are drawn from the most frequent words of each
language, words that occur in more than one chosen language are dropped (their language label would
be ambiguous), and the train and held-out splits are disjoint sets of word strings.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "DEFAULT_LANGUAGES",
    "DEFAULT_TASKS",
    "WordData",
    "available_languages",
    "encode",
    "load_words",
    "validate_languages",
]

DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "de", "fr", "es")
#: the tasks of Alice's settings 1, 2 and Bob's settings 1, 2
DEFAULT_TASKS: Mapping[str, str] = {
    "A1": "lang:en,de",
    "A2": "freq:4.3-4.9",
    "B1": "lang:en,fr",
    "B2": "length",
}


def available_languages() -> list[str]:
    """Language codes with a ``best`` word list in the installed ``wordfreq``."""
    import wordfreq

    return sorted(wordfreq.available_languages(wordlist="best"))


def validate_languages(codes: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming every code that ``wordfreq`` does not know."""
    known = set(available_languages())
    unknown = [c for c in codes if c not in known]
    if unknown:
        raise ValueError(
            f"unknown language code(s) {unknown}: wordfreq has word lists for {sorted(known)}"
        )
    if len(set(codes)) != len(codes) or len(codes) < 2:
        raise ValueError(f"need at least two distinct languages, got {list(codes)}")


@dataclass
class WordData:
    """A labelled pool of words split into disjoint train and held-out parts.

    Attributes:
        words: the word strings, train words first.
        lang: language code of each word.
        zipf: Zipf frequency of each word in its language.
        labels: task name -> int64 tensor of 0/1 labels, one per word.
        n_train: the first ``n_train`` words are the training split, the rest are held out.
        specs: task name -> spec string it was built from.
    """

    words: list[str]
    lang: list[str]
    zipf: np.ndarray
    labels: dict[str, torch.Tensor]
    n_train: int
    specs: dict[str, str] = field(default_factory=dict)

    @property
    def train_words(self) -> list[str]:
        return self.words[: self.n_train]

    @property
    def heldout_words(self) -> list[str]:
        return self.words[self.n_train :]


def _script(word: str) -> str:
    for ch in word:
        if ch.isalpha():
            return unicodedata.name(ch, "UNKNOWN").split(" ")[0].lower()
    return "unknown"


def _freq_band(spec: str) -> tuple[float, float] | None:
    """``(lo, hi)`` of a ``freq:LO-HI`` spec (``lo <= zipf < hi`` is left out), else None."""
    kind, _, arg = spec.partition(":")
    if kind.strip().lower() != "freq" or "-" not in arg:
        return None
    try:
        lo, hi = (float(x) for x in arg.split("-"))
    except ValueError:
        raise ValueError(
            f"task {spec!r}: write a frequency band as 'freq:LO-HI', e.g. 'freq:4.3-4.9'"
        ) from None
    if not lo < hi:
        raise ValueError(f"task {spec!r}: the band needs LO < HI, got {lo} and {hi}")
    return lo, hi


def _task_labeller(
    spec: str,
    languages: Sequence[str],
    lang: Sequence[str],
    zipf: np.ndarray,
    words: Sequence[str],
) -> Callable[[int], int]:
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "lang":
        group = [c.strip() for c in arg.split(",") if c.strip()]
        validate_languages(group + [c for c in languages if c not in group])
        outside = [c for c in group if c not in languages]
        if outside or not group or len(group) == len(languages):
            raise ValueError(
                f"task {spec!r}: the group must be a proper, non-empty subset of the chosen "
                f"languages {list(languages)}"
            )
        return lambda i: int(lang[i] in group)
    band = _freq_band(spec)
    if band is not None:
        return lambda i: int(zipf[i] >= band[1])
    if kind in ("freq", "length"):
        values = zipf if kind == "freq" else np.array([len(w) for w in words], dtype=float)
        threshold = float(arg) if arg else float(np.median(values))
        return lambda i: int(values[i] >= threshold)
    if kind == "script":
        target = arg.strip().lower()
        if not target:
            raise ValueError(f"task {spec!r}: name a Unicode script, e.g. 'script:cyrillic'")
        return lambda i: int(_script(words[i]) == target)
    raise ValueError(
        f"unknown task spec {spec!r}: use 'lang:<codes>', 'freq[:zipf]', 'length[:n]' "
        "or 'script:<name>'"
    )


def load_words(
    languages: Sequence[str] = DEFAULT_LANGUAGES,
    tasks: Mapping[str, str] = DEFAULT_TASKS,
    *,
    per_language: int = 200,
    top_n: int = 5000,
    heldout_fraction: float = 0.5,
    min_length: int = 2,
    seed: int = 0,
) -> WordData:
    """Draw a labelled word pool from ``wordfreq`` and split it into train and held-out words.

    Args:
        languages: wordfreq language codes (validated; see :func:`available_languages`).
        tasks: task name -> spec (see the module docstring); must define A1, A2, B1, B2.
        per_language: words drawn per language (uniformly from its ``top_n`` most frequent
            alphabetic words, so frequencies span several Zipf units).
        top_n: size of each language's candidate list.
        heldout_fraction: share of words held out; train and held-out share no word.
        min_length: shortest word kept.
        seed: the data seed (fixed across the ensemble: the pool is the same for every run).

    Returns:
        A :class:`WordData`, classes of every task checked to be non-empty in both splits.
    """
    import wordfreq

    validate_languages(list(languages))
    missing = [t for t in ("A1", "A2", "B1", "B2") if t not in tasks]
    if missing:
        raise ValueError(f"tasks must define A1, A2, B1 and B2; missing {missing}")
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    lists = {
        c: [w for w in wordfreq.top_n_list(c, top_n) if w.isalpha() and len(w) >= min_length]
        for c in languages
    }
    counts: dict[str, int] = {}
    for ws in lists.values():
        for w in set(ws):
            counts[w] = counts.get(w, 0) + 1
    bands = [b for b in map(_freq_band, tasks.values()) if b is not None]
    rng = np.random.default_rng(seed)
    words, lang = [], []
    for c in languages:
        unique = [w for w in lists[c] if counts[w] == 1]
        if bands:  # leave out the words inside a frequency band's gap
            unique = [
                w
                for w in unique
                if not any(lo <= wordfreq.zipf_frequency(w, c) < hi for lo, hi in bands)
            ]
        if len(unique) < per_language:
            raise ValueError(
                f"language {c!r} has only {len(unique)} usable words; lower per_language "
                f"({per_language}) or raise top_n ({top_n})"
            )
        pick = rng.choice(len(unique), size=per_language, replace=False)
        words += [unique[i] for i in sorted(pick)]
        lang += [c] * per_language
    order = rng.permutation(len(words))
    words = [words[i] for i in order]
    lang = [lang[i] for i in order]
    zipf = np.array([wordfreq.zipf_frequency(w, c) for w, c in zip(words, lang, strict=True)])
    labels = {}
    for name, spec in tasks.items():
        fn = _task_labeller(spec, languages, lang, zipf, words)
        labels[name] = torch.tensor([fn(i) for i in range(len(words))], dtype=torch.int64)
    n_train = len(words) - max(1, round(heldout_fraction * len(words)))
    data = WordData(words, lang, zipf, labels, n_train, dict(tasks))
    if set(data.train_words) & set(data.heldout_words):  # words are unique by construction
        raise AssertionError("train and held-out splits share a word")
    for name, y in labels.items():
        for part, ys in (("train", y[:n_train]), ("held-out", y[n_train:])):
            if ys.min() == ys.max():
                raise ValueError(
                    f"task {name} ({tasks[name]!r}) has a single class in the {part} split; "
                    "use more words or another threshold"
                )
    return data


def encode(
    tokenizer: object, words: Sequence[str], max_length: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise every word once, up front: ``(input_ids, attention_mask)``, each ``(n, length)``."""
    if max_length < 3:
        raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
    enc = tokenizer(  # type: ignore[operator]
        list(words),
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return enc["input_ids"], enc["attention_mask"]
