"""One word-time scheme (mtspeech/alignment.py): the server's streaming decoders give the same words,
times and confidences as `mtspeech evaluate`'s `word_alignments` on the same log-probs."""

from __future__ import annotations

import pytest
import torch

from mtspeech.decoding.config import DecodingConfig
from mtspeech.alignment import TokenSpan, piece_groups, timed_words, word_alignments
from mtspeech.decoding.ctc import GreedyDecoder as OfflineGreedy
from mtspeech.streaming.decoders import BeamDecoder, GreedyDecoder
from tiny_asr import PIECES, PieceTable

PRUNE = DecodingConfig.beam_threshold  # the served beam pruning

torch.set_num_threads(1)
SHIFT = 0.04


class Pieces(PieceTable):
    vocab_size = len(PIECES)

    def decode(self, ids: list[int]) -> str:
        return "".join(PIECES[i] for i in ids).replace("\u2581", " ").strip()


def _log_probs(frames: int, seed: int) -> torch.Tensor:
    """Random, peaky, tie-free log-posteriors (T, V): mostly blank, with token runs."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(frames, len(PIECES), generator=g)
    logits[:, 0] += 1.5  # blank-heavy, as CTC is
    return logits.log_softmax(-1)


def _streamed(decoder, log_probs: torch.Tensor, seed: int):
    """Push `log_probs` to one utterance in random pieces, as the recognizer does chunk by chunk."""
    utt, t = decoder.begin(), 0
    g = torch.Generator().manual_seed(seed)
    while t < len(log_probs):
        n = int(torch.randint(1, 9, (1,), generator=g))
        utt.push(log_probs[t : t + n], t)
        t += n
    return utt.end()


@pytest.mark.parametrize("seed", range(4))
def test_streaming_greedy_words_equal_evaluate_word_alignments(seed):
    lp = _log_probs(120, seed)
    got = _streamed(GreedyDecoder(Pieces(), 0, SHIFT), lp, seed)
    tokens = OfflineGreedy(Pieces()).decode(lp[None], torch.tensor([len(lp)]))[0].tokens
    assert list(got.tokens) == tokens and tokens
    assert got.words == word_alignments(lp, tokens, Pieces(), SHIFT)  # times and confidences alike


@pytest.mark.parametrize("seed", range(3))
def test_streaming_beam_words_equal_evaluate_word_alignments(seed):
    lp = _log_probs(100, seed)
    got = _streamed(BeamDecoder(Pieces(), "asr", SHIFT, beam_size=6, beam_threshold=PRUNE), lp, seed)
    assert got.tokens
    assert got.words == word_alignments(lp, list(got.tokens), Pieces(), SHIFT)


def test_timed_words_spans_and_confidence():
    # tokens ▁A(2) C(4) | ▁E(6): frames 1-2, 4, 7-9; posteriors summed per token
    spans = [TokenSpan(2, 1, 2, 1.6), TokenSpan(4, 4, 4, 0.5), TokenSpan(6, 7, 9, 2.7)]
    words = timed_words(spans, piece_groups([2, 4, 6], Pieces()), SHIFT)
    assert [(w.word, w.start, w.end) for w in words] == [("AC", 0.04, 0.2), ("E", 0.28, 0.4)]
    assert words[0].confidence == pytest.approx((0.8 + 0.5) / 2) and words[1].confidence == pytest.approx(0.9)
    with pytest.raises(ValueError, match="cover 2 tokens, not 3"):
        timed_words(spans, [("AC", 2)], SHIFT)
