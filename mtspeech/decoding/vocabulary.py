"""Open vocabulary for the whole server: `--lexicon-extra FILE` words join the LM and the lexicons.

A lexicon decoder (beam over pieces with a word LM, or the phone-lexicon decoder) can only
output words of its lexicon, and its lexicon is the LM's vocabulary. `--lexicon-extra` names a
UTF-8 text file of further words, one a line:

    # comments and blank lines are skipped
    QUOKKA                      a word: spelled by CMUdict, else the G2P model (data/g2p.py)
    NGUYEN  W IH N              a word and its ARPAbet phones, for the phone decoder

Each word is normalised as transcripts are (`text/normalize.py`) and must stay one word.

**LM back-off for the added words.** An ARPA LM scores a word it does not list as `<unk>`,
which an LM without `<unk>` (or a tiny `<unk>` estimate) makes all but impossible. So
`extend_arpa` writes a copy of the LM with each added word as a unigram whose log10
probability is that of the LM's rarest listed word (`floor_log10_prob`), with no back-off
weight of its own: in any context h, p(w | h) = backoff(h) * p_rarest, ordinary ARPA back-off,
which KenLM (flashlight), pyctcdecode and `ArpaLM` all compute. The added mass is not taken from
other words, so the LM no longer sums to one exactly; a beam search needs scores, not a
distribution, and one word among thousands moves the sum by about p_rarest.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mtspeech.data.lexicon import PHONES
from mtspeech.decoding.lm import BOS, EOS, UNK, ArpaLM, write_arpa
from mtspeech.text.normalize import normalize_text

log = logging.getLogger(__name__)

# `--lexicon-extra` is read whole at start; this bounds a mistaken file (a corpus, a binary)
MAX_EXTRA_BYTES = 16 * 1024 * 1024


def read_lexicon_extra(path: str | Path) -> dict[str, tuple[str, ...] | None]:
    """Word → its ARPAbet phones as written in the file (None: to be spelled by `g2p.pronounce`).

    Raises ValueError naming the file and line for a line that is not one word (plus phones),
    or a phone outside the model's phone set.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--lexicon-extra {path}: no such file")
    if path.stat().st_size > MAX_EXTRA_BYTES:
        raise ValueError(f"--lexicon-extra {path}: larger than {MAX_EXTRA_BYTES} bytes; expected one word a line")
    words: dict[str, tuple[str, ...] | None] = {}
    known = set(PHONES)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--lexicon-extra {path}: not UTF-8 text ({e})") from e
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        normalised = normalize_text(fields[0]).split()
        if len(normalised) != 1:
            raise ValueError(f"{path}:{lineno}: {fields[0]!r} normalises to {len(normalised)} words "
                             f"({' '.join(normalised)!r}); a line holds one word and optionally its phones")
        phones = tuple(p.upper().rstrip("012") for p in fields[1:])
        if not set(phones) <= known:
            raise ValueError(f"{path}:{lineno}: phones {sorted(set(phones) - known)} are not ARPAbet "
                             f"(the model's phones: {' '.join(PHONES)})")
        words[normalised[0]] = phones or None
    if not words:
        raise ValueError(f"--lexicon-extra {path}: no word in it")
    return words


def floor_log10_prob(lm: ArpaLM) -> float:
    """log10 probability of the LM's rarest listed word (unigrams other than <s>, </s>, <unk>)."""
    scores = [p for g, p in lm.log_probs[0].items() if g[0] not in (BOS, EOS, UNK)]
    if not scores:
        raise ValueError("the LM lists no word: cannot derive a back-off for added words")
    return min(scores)


def extend_arpa(lm_path: str | Path, words, out_path: str | Path) -> Path:
    """Write `lm_path` with every word of `words` it lacks added as a back-off unigram (see the
    module docstring) to `out_path`; returns `out_path`."""
    lm = ArpaLM.load(lm_path)
    floor = floor_log10_prob(lm)
    log_probs = [dict(order) for order in lm.log_probs]
    backoffs = [dict(order) for order in lm.backoffs]
    added = [w for w in words if (w,) not in log_probs[0]]
    for w in added:
        log_probs[0][(w,)] = floor
    log.info("--lexicon-extra: %d word(s) added to the LM at log10 p = %.3f (its rarest word), %d already in it",
             len(added), floor, len(words) - len(added))
    return write_arpa(log_probs, backoffs, out_path)
