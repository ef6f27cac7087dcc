"""Word n-gram language models for CTC beam search: build, write as ARPA, read back.

`lmplz` (KenLM's estimator) is a C++ binary that pip does not ship, so we estimate the
model ourselves and write the standard ARPA text format, which KenLM, flashlight (through
torchaudio's `ctc_decoder`) and pyctcdecode all load.

Smoothing: **interpolated modified Kneser-Ney** (Chen & Goodman 1998), the same estimator
`lmplz` uses, stored in backoff form:

    a(g)       adjusted count of n-gram g = raw count c(g) at the highest order or when
               g starts with <s>; otherwise the continuation count N1+(. g), the number
               of distinct words seen before g
    D_n(k)     discount of order n for an adjusted count k: D1, D2, D3+ from the count
               of counts t_k of order n:  Y = t1/(t1 + 2 t2),  D_k = k - (k+1) Y t_{k+1}/t_k
    p(w | h)   = (a(hw) - D(a(hw))) / sum_v a(hv)  +  gamma(h) p(w | h')      (h' = h minus its first word)
    gamma(h)   = sum_v D(a(hv)) / sum_v a(hv)
    p(w)       = (a(w) - D(a(w))) / sum_v a(v)  +  gamma() / |V|             (V includes </s> and <unk>)

The ARPA file stores log10 p(w | h) for every seen n-gram hw and log10 gamma(h) as the
backoff weight of h, so an unseen w gets gamma(h) p(w | h') by ordinary backoff: every
context's distribution sums to one exactly (up to the 6 printed decimals).

On tiny corpora the count-of-counts can be zero or give a discount outside (0, k); such a
discount falls back to k/2 (0.5, 1.0, 1.5) instead of failing as `lmplz` does.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_NEVER = -99.0  # log10 probability ARPA files give to <s>, which is never predicted


class PieceTokenizer(Protocol):
    """What the lexicon builder needs from `mtspeech.text.tokenizer.Tokenizer`."""

    def encode(self, text: str) -> list[int]: ...

    def id_to_piece(self, i: int) -> str: ...


def _discounts(adjusted: dict[tuple[str, ...], int]) -> tuple[float, float, float]:
    """Modified-KN discounts (D1, D2, D3+) from one order's adjusted counts."""
    t = Counter(k for k in adjusted.values() if k <= 4)
    out = []
    y = t[1] / (t[1] + 2 * t[2]) if t[1] + t[2] > 0 else 0.0
    for k in (1, 2, 3):
        d = k - (k + 1) * y * t[k + 1] / t[k] if t[k] > 0 else float("nan")
        if not 0.0 < d < k:  # also catches nan: too little data for the estimate
            d = k / 2
        out.append(d)
    return out[0], out[1], out[2]


def _discount(d: tuple[float, float, float], count: int) -> float:
    return 0.0 if count == 0 else d[min(count, 3) - 1]


def estimate_kneser_ney(
    sentences: Iterable[Sequence[str]], order: int = 3
) -> tuple[list[dict[tuple[str, ...], float]], list[dict[tuple[str, ...], float]]]:
    """Interpolated modified Kneser-Ney estimate (see the module docstring).

    Returns `(log10_probs, log10_backoffs)`, each a list indexed by order - 1 of
    `{ngram tuple: value}`; backoffs exist for every n-gram that is a context.
    """
    if order < 1:
        raise ValueError(f"n-gram order must be >= 1, got {order}")
    raw: list[Counter] = [Counter() for _ in range(order)]
    for words in sentences:
        padded = [BOS, *words, EOS]
        for n in range(1, order + 1):
            for i in range(len(padded) - n + 1):
                raw[n - 1][tuple(padded[i : i + n])] += 1
    if not raw[0]:
        raise ValueError("cannot build an n-gram LM from no text")

    # Adjusted counts: continuation counts below the top order, except n-grams that start
    # with <s> (nothing can precede them, so their raw count is all we have).
    adjusted: list[dict[tuple[str, ...], int]] = []
    for n in range(1, order + 1):
        if n == order:
            adj = dict(raw[n - 1])
        else:
            left = Counter(g[1:] for g in raw[n])  # each distinct (v, g) adds 1 to g
            adj = {g: (c if g[0] == BOS else left[g]) for g, c in raw[n - 1].items()}
        adj.pop((BOS,), None)  # <s> is never predicted
        adjusted.append(adj)
    adjusted[0].setdefault((EOS,), 0)
    adjusted[0].setdefault((UNK,), 0)

    probs: list[dict[tuple[str, ...], float]] = []  # linear probabilities while estimating
    gammas: list[dict[tuple[str, ...], float]] = []  # gamma(h), h of length n - 1

    def lower(w: str, h: tuple[str, ...]) -> float:
        """Interpolated p(w | h) from the orders already estimated (backoff recursion)."""
        p = probs[len(h)].get(h + (w,))
        if p is not None:
            return p
        return gammas[len(h)].get(h, 1.0) * lower(w, h[1:])

    for n in range(1, order + 1):
        adj = adjusted[n - 1]
        d = _discounts(adj)
        total: dict[tuple[str, ...], float] = defaultdict(float)
        discounted: dict[tuple[str, ...], float] = defaultdict(float)
        for g, c in adj.items():
            total[g[:-1]] += c
            discounted[g[:-1]] += _discount(d, c)
        gamma = {h: discounted[h] / total[h] for h in total if total[h] > 0}
        gammas.append(gamma)
        p_n: dict[tuple[str, ...], float] = {}
        vocab_size = len(adjusted[0])
        for g, c in adj.items():
            h, w = g[:-1], g[-1]
            own = (c - _discount(d, c)) / total[h] if total[h] > 0 else 0.0
            rest = 1.0 / vocab_size if n == 1 else lower(w, h[1:])
            p_n[g] = own + gamma.get(h, 1.0) * rest
        probs.append(p_n)

    log_probs = [{g: math.log10(p) for g, p in p_n.items()} for p_n in probs]
    log_probs[0][(BOS,)] = _NEVER
    backoffs: list[dict[tuple[str, ...], float]] = [{} for _ in range(order)]
    for n in range(2, order + 1):
        for h, gam in gammas[n - 1].items():
            backoffs[n - 2][h] = math.log10(gam) if gam > 0 else _NEVER
    # <s> is a context (of every first word) even though it is never predicted.
    return log_probs, backoffs


def write_arpa(
    log_probs: list[dict[tuple[str, ...], float]],
    backoffs: list[dict[tuple[str, ...], float]],
    out_path: str | Path,
) -> Path:
    """Write an ARPA file: `log10 p <tab> w1 .. wn [<tab> log10 backoff]` per n-gram."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    order = len(log_probs)
    lines = ["", "\\data\\"]
    lines += [f"ngram {n}={len(log_probs[n - 1])}" for n in range(1, order + 1)]
    for n in range(1, order + 1):
        lines += ["", f"\\{n}-grams:"]
        for g in sorted(log_probs[n - 1]):
            row = f"{log_probs[n - 1][g]:.6f}\t{' '.join(g)}"
            if n < order:
                row += f"\t{backoffs[n - 1].get(g, 0.0):.6f}"
            lines.append(row)
    lines += ["", "\\end\\", ""]
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(out_path)
    return out_path


def build_ngram_lm(texts: Iterable[str], order: int = 3, out_path: str | Path = "lm.arpa") -> Path:
    """Estimate a word n-gram LM (modified Kneser-Ney) from transcripts and write it as ARPA.

    `texts` are already normalised transcripts (one utterance each, words split on
    whitespace). Returns the path of the ARPA file.
    """
    sentences = [t.split() for t in texts]
    sentences = [s for s in sentences if s]
    log_probs, backoffs = estimate_kneser_ney(sentences, order)
    path = write_arpa(log_probs, backoffs, out_path)
    log.info("wrote %d-gram LM (%d words) to %s", order, len(log_probs[0]), path)
    return path


@dataclass(frozen=True)
class ArpaLM:
    """An ARPA model read back into Python dicts: scoring for tests and small decoders."""

    log_probs: list[dict[tuple[str, ...], float]]
    backoffs: list[dict[tuple[str, ...], float]]

    @property
    def order(self) -> int:
        return len(self.log_probs)

    @property
    def vocab(self) -> list[str]:
        return [g[0] for g in self.log_probs[0]]

    @classmethod
    def load(cls, path: str | Path) -> "ArpaLM":
        """Parse an ARPA file; raises ValueError naming the file and line on bad input."""
        path = Path(path)
        log_probs: list[dict] = []
        backoffs: list[dict] = []
        expected: dict[int, int] = {}
        section = 0
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if not line or line == "\\data\\":
                continue
            if line == "\\end\\":
                break
            if line.startswith("ngram "):
                n, count = line[6:].split("=")
                expected[int(n)] = int(count)
            elif line.startswith("\\") and line.endswith("-grams:"):
                section = int(line[1:].split("-")[0])
                while len(log_probs) < section:
                    log_probs.append({})
                    backoffs.append({})
            elif section:
                parts = line.split()
                if len(parts) not in (section + 1, section + 2):
                    raise ValueError(f"{path}:{lineno}: expected {section}-gram line, got {line!r}")
                g = tuple(parts[1 : section + 1])
                log_probs[section - 1][g] = float(parts[0])
                if len(parts) == section + 2:
                    backoffs[section - 1][g] = float(parts[-1])
            else:
                raise ValueError(f"{path}:{lineno}: unexpected line {line!r}")
        for n, count in expected.items():
            if n > len(log_probs) or len(log_probs[n - 1]) != count:
                raise ValueError(f"{path}: header says {count} {n}-grams, file has a different number")
        return cls(log_probs, backoffs)

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context) by backoff; unknown words score as <unk>."""
        if (word,) not in self.log_probs[0]:
            word = UNK
        h = tuple(context)[-(self.order - 1) :] if self.order > 1 else ()
        bow = 0.0
        while True:
            p = self.log_probs[len(h)].get(h + (word,))
            if p is not None:
                return bow + p
            if not h:
                return bow + _NEVER  # only reached for a file without <unk>
            bow += self.backoffs[len(h) - 1].get(h, 0.0)
            h = h[1:]

    def sentence_log10_prob(self, words: Sequence[str]) -> float:
        """log10 p(<s> words </s>)."""
        context = [BOS]
        total = 0.0
        for w in [*words, EOS]:
            total += self.log10_prob(w, context)
            context.append(w)
        return total


def build_lexicon(words: Iterable[str], tokenizer: PieceTokenizer, out_path: str | Path) -> Path:
    """Write a flashlight lexicon: one `WORD<tab>piece piece ...` line per distinct word.

    The spelling is the tokenizer's own segmentation of the word, so the first piece
    carries the "▁" word-start mark exactly as in training targets.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for w in sorted(set(words) - {BOS, EOS, UNK}):
        pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode(w)]
        if pieces:
            lines.append(f"{w}\t{' '.join(pieces)}")
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_path


def build_phone_lexicon(words: Iterable[str], phones: Sequence[str], out_path: str | Path,
                        oov: str = "g2p", spellings: dict[str, Sequence[str]] | None = None) -> Path:
    """Write a flashlight lexicon over phones: one `WORD<tab>PH PH ...` line per word.

    Pronunciations come from `spellings` (word → phones: the open-vocabulary words of
    `decoding/vocabulary.py`), else from CMUdict (`mtspeech.data.lexicon.Lexicon`, espeak-ng
    letter-to-sound for a word it lacks, as when the phone labels were made). A word that has no
    pronunciation, or one using a phone outside `phones` (the phone task's label set), is
    left out and logged: a decoder can only spell words in the units its head emits.
    """
    from mtspeech.data.lexicon import Lexicon

    lexicon, known, spellings = Lexicon(oov=oov), set(phones), spellings or {}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    lines, dropped = [], []
    for w in sorted(set(words) - {BOS, EOS, UNK}):
        spelling = spellings[w] if w in spellings else lexicon.word_phones(w)
        if spelling and set(spelling) <= known:
            lines.append(f"{w}\t{' '.join(spelling)}")
        else:
            dropped.append(w)
    if dropped:
        log.warning("phone lexicon: %d word(s) without a pronunciation in the phone set left out, e.g. %s",
                    len(dropped), dropped[:5])
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_path
