"""The demo corpus's text: clean English sentences from Debian's fortunes files, and their splits.

Sentences come from the public-domain quotations, riddles and literature of the `fortunes`
package (`FORTUNE_FILES`; the Linux, Perl, ASCII-art and joke-at-someone's-expense files are
left out), normalised with the one text normaliser training and scoring use and kept when
`min_words`-`max_words` long with every word in CMUdict (so the phone head has a reference).

Splits: `split_sentences` holds dev and test sentences out so that each of their words still
occurs in some training sentence; `cover_first` orders the training sentences so the ones
that carry those words are read first (a corpus reads each training sentence at most once
until its hours are spent, so a small corpus stays closed-vocabulary on dev and test);
`oov_sentences` picks, among the sentences training never reads, ones with words no read
training sentence has: the test-engine split's open-vocabulary half.
"""

from __future__ import annotations

import functools
import random
import re
from collections import Counter
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNE_FILES = ("fortunes", "literature", "riddles", "wisdom", "people", "platitudes", "science",
                 "education", "work", "humorists", "law", "love", "food", "kids", "pets", "politics",
                 "sports", "news", "miscellaneous", "cookie", "computers", "definitions", "magic",
                 "medicine", "paradoxum", "songs-poems", "tao", "goedel", "pratchett", "startrek")
FORTUNES_PACKAGE = "fortunes"


@functools.lru_cache(maxsize=4)
def load_sentences(min_words: int = 4, max_words: int = 12) -> tuple[str, ...]:
    """Normalised fortunes sentences of min..max words, all words in CMUdict; sorted, unique."""
    from mtspeech.data.lexicon import cmu_dictionary
    from mtspeech.text.normalize import normalize_text

    lexicon = cmu_dictionary()
    out: set[str] = set()
    missing = [name for name in FORTUNE_FILES if not (FORTUNES_DIR / name).exists()]
    if missing:
        raise RuntimeError(f"fortunes files {missing} not under {FORTUNES_DIR}: install Debian's "
                           f"'{FORTUNES_PACKAGE}' package (apt-get install {FORTUNES_PACKAGE})")
    for name in FORTUNE_FILES:
        text = (FORTUNES_DIR / name).read_text(encoding="utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", text, flags=re.M):
            entry = re.split(r"\n\s*--", entry)[0]  # drop "-- Author" attributions
            for sentence in re.split(r"(?<=[.!?;:])\s+", " ".join(entry.split())):
                words = normalize_text(sentence).split()
                if min_words <= len(words) <= max_words and all(w in lexicon for w in words):
                    out.add(" ".join(words))
    return tuple(sorted(out))


def sentence_pool(min_words: int, max_words: int, vocab_words: int | None) -> tuple[str, ...]:
    """The sentences a corpus draws from: `load_sentences`, cut to a closed vocabulary of the
    `vocab_words` most frequent words (None: no cut, the default since issue 35: thousands of
    sentences read about once each teach spelling better than 301 read many times)."""
    sentences = load_sentences(min_words, max_words)
    if vocab_words is None:
        return sentences
    counts = Counter(w for s in sentences for w in s.split())
    top = {w for w, _ in counts.most_common(vocab_words)}
    kept = tuple(s for s in sentences if all(w in top for w in s.split()))
    if len(kept) < 20:
        raise RuntimeError(f"only {len(kept)} sentences fit a {vocab_words}-word vocabulary; raise vocab_words")
    return kept


def split_sentences(sentences: tuple[str, ...] | list[str], n_dev: int, n_test: int,
                    rng: random.Random) -> tuple[list[str], list[str], list[str]]:
    """(train, dev, test) sentence lists; every dev/test word also occurs in train.

    Greedy: walk the shuffled pool and hold a sentence out only if each of its words still
    has another occurrence left in the pool. At most half the pool is held out.
    """
    pool = list(sentences)
    rng.shuffle(pool)
    counts = Counter(w for s in pool for w in s.split())
    held: list[str] = []
    budget = min(n_dev + n_test, len(pool) // 2)
    for s in pool:
        if len(held) >= budget:
            break
        need = Counter(s.split())
        if all(counts[w] > k for w, k in need.items()):
            counts.subtract(need)
            held.append(s)
    held_set = set(held)
    train = [s for s in pool if s not in held_set]
    # Share what was found in proportion, leaving each of dev and test at least one sentence.
    n_dev_real = min(max(1, round(len(held) * n_dev / (n_dev + n_test))), len(held) - 1)
    return train, held[:max(n_dev_real, 0)], held[max(n_dev_real, 0):]


def cover_first(train: list[str], held: list[str]) -> list[str]:
    """`train` reordered: first, for each word of `held` in turn, the first training sentence
    that has it (if no earlier one did), then the others in their order."""
    by_word: dict[str, str] = {}
    for s in train:
        for w in s.split():
            by_word.setdefault(w, s)
    first: dict[str, None] = {}
    covered: set[str] = set()
    for s in held:
        for w in s.split():
            if w not in covered and w in by_word:
                first[by_word[w]] = None
                covered.update(by_word[w].split())
    return list(first) + [s for s in train if s not in first]


def oov_sentences(unread: list[str], read: list[str], n: int) -> list[str]:
    """Up to `n` sentences of `unread` (in order) with at least one word no `read` sentence has."""
    vocab = {w for s in read for w in s.split()}
    return [s for s in unread if any(w not in vocab for w in s.split())][:n]
