"""Token decoders of the streaming recognizer (mtspeech/streaming/decoders.py).

Invariants on a tiny random model: each beam decoder streamed chunk by chunk equals the
offline `BeamSearchDecoder` on the chunk-masked full forward (lexicon-free, piece lexicon + word
LM, phone lexicon + word LM); stable prefixes of partials only extend; with greedy the final
starts with the last stable prefix; word times stay inside the audio and in order.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtspeech.decoding.ctc import BeamSearchDecoder, PhoneTable
from mtspeech.streaming.endpoint import EndpointConfig
from mtspeech.decoding.lm import build_ngram_lm
from mtspeech.model import MultiTaskModel
from mtspeech.streaming import FinalEvent, PartialEvent, StreamingConfig, StreamingRecognizer
from mtspeech.decoding.config import DecodingConfig
from mtspeech.decoding.loader import build_decoders
from mtspeech.streaming.decoders import BeamDecoder
from mtspeech.tasks.ctc import CTCConfig, CTCTask
from test_streaming import feed_randomly, finals_of
from tiny_asr import CHUNK, LEFT, PIECES, PieceTable, signal, tiny_model

torch.set_num_threads(1)

PRUNE = DecodingConfig.beam_threshold  # the served pruning
PHONES = ["AE", "AH", "B", "D", "K", "S", "T"]
# words over PIECES (▁A ▁B C D ▁E F ▁G H I ▁J) and over PHONES
PIECE_LEXICON = {"A": "\u2581A", "ACD": "\u2581A C D", "B": "\u2581B", "BF": "\u2581B F", "EH": "\u2581E H",
                 "GI": "\u2581G I", "J": "\u2581J", "EC": "\u2581E C"}
PHONE_LEXICON = {"CAT": "K AE T", "BAD": "B AE D", "TAB": "T AE B", "SAT": "S AE T", "A": "AH", "DUST": "D AH S T"}
SENTENCES = ["A B EH", "ACD GI J", "BF EC A", "J J A B", "CAT SAT", "A BAD CAT", "TAB DUST A"]


class Pieces(PieceTable):
    """PIECES with the size and `decode` the offline beam decoder needs."""

    vocab_size = len(PIECES)

    def decode(self, ids: list[int]) -> str:
        return "".join(PIECES[i] for i in ids).replace("\u2581", " ").strip()


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    lm = build_ngram_lm(SENTENCES, 3, d / "lm.arpa")
    (d / "pieces.lex").write_text("".join(f"{w}\t{s}\n" for w, s in PIECE_LEXICON.items()))
    (d / "phones.lex").write_text("".join(f"{w}\t{s}\n" for w, s in PHONE_LEXICON.items()))
    return lm, d / "pieces.lex", d / "phones.lex"


def tiny_phone_model(seed: int = 0) -> MultiTaskModel:
    """tiny_asr's model plus a phone CTC head on the first encoder layer."""
    base = tiny_model(seed)
    torch.manual_seed(seed + 100)
    phones = CTCTask(CTCConfig(name="phones", label="phones", layer=0, dropout=0.0), 32,
                     {"label": "phones", "phones": PHONES})
    tasks = dict(base.tasks)
    tasks["phones"] = phones
    return MultiTaskModel(base.fbank, base.cmvn, base.encoder, tasks, "asr").eval()


def recognizer(lm_files, seed=0, endpoint=None) -> StreamingRecognizer:
    lm, piece_lex, phone_lex = lm_files
    model = tiny_phone_model(seed)
    rec = StreamingRecognizer(model, PieceTable(), StreamingConfig(CHUNK, LEFT, endpoint or EndpointConfig()))
    fs = rec.frame_shift_s
    rec.decoders.update({
        "beam": BeamDecoder(Pieces(), "asr", fs, beam_size=8, beam_threshold=PRUNE),
        "beam_lm": BeamDecoder(Pieces(), "asr", fs, beam_size=8, beam_threshold=PRUNE, lm=lm, lexicon=piece_lex,
                               lm_weight=0.5),
        "phones": BeamDecoder(PhoneTable(PHONES), "phones", fs, beam_size=8, beam_threshold=PRUNE, lm=lm,
                              lexicon=phone_lex, lm_weight=0.5),
    })
    return rec


def offline_log_probs(rec: StreamingRecognizer, wav: np.ndarray, task: str) -> torch.Tensor:
    """(T, V) log-probs of a head on the chunk-masked full forward."""
    model = rec.model
    with torch.inference_mode():
        feats, lens = model.features(torch.from_numpy(wav)[None], torch.tensor([len(wav)]))
        enc = model.encoder(feats, lens, chunk_frames=CHUNK, left_chunks=LEFT)
        head = model.tasks[task]
        return head(enc.layers[head.layer], enc.lens).float().log_softmax(-1)[0, : int(enc.lens[0])]


def stream_events(rec, wav, decoder, seed=1, endpointing=True):
    s = rec.new_stream(endpointing=endpointing, decoder=decoder)
    feed_randomly(rec, s, wav, np.random.default_rng(seed))
    rec.finish(s)
    return rec.events(s)


@pytest.mark.parametrize("name", ["beam", "beam_lm", "phones"])
def test_streamed_beam_equals_offline_beam(lm_files, name):
    lm, piece_lex, phone_lex = lm_files
    rec = recognizer(lm_files)
    wav = signal(3.0, seed=2)
    if name == "phones":
        offline = BeamSearchDecoder(PhoneTable(PHONES), beam_size=8, beam_threshold=PRUNE, lm=lm, lexicon=phone_lex)
        lp = offline_log_probs(rec, wav, "phones")
    else:
        offline = BeamSearchDecoder(Pieces(), beam_size=8, beam_threshold=PRUNE, lm=lm if name == "beam_lm" else None,
                                    lexicon=piece_lex if name == "beam_lm" else None)
        lp = offline_log_probs(rec, wav, "asr")
    ref = offline.decode(lp[None], torch.tensor([lp.shape[0]]))[0]
    finals = finals_of(stream_events(rec, wav, name, endpointing=False))
    assert ref.text, "the random model should give the beam something to find"
    assert len(finals) == 1
    assert finals[0].text == ref.text
    assert list(finals[0].tokens) == ref.tokens
    words = finals[0].words
    assert all(0 <= w.start < w.end <= 3.0 + 1e-6 and 0 < w.confidence <= 1 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:]))


def test_beam_without_lm_scores_at_least_greedy_path(lm_files):
    """log_add=False and no LM: the greedy path is in the beam, so beam finals exist where greedy's do."""
    rec = recognizer(lm_files)
    wav = signal(4.0, seed=5)
    greedy = finals_of(stream_events(rec, wav, "greedy", endpointing=False))
    beam = finals_of(stream_events(rec, wav, "beam", endpointing=False))
    assert bool(greedy) == bool(beam)


@pytest.mark.parametrize("name", ["greedy", "beam", "beam_lm", "phones"])
def test_stable_prefix_only_extends(lm_files, name):
    """Over several streams and endpointed utterances: within an utterance each partial's
    stable words extend the previous ones, text = stable + unstable; for greedy the final
    starts with the last stable prefix."""
    checked = 0
    for seed in range(3):
        rec = recognizer(lm_files, seed=seed, endpoint=EndpointConfig(rule2_trailing_silence_s=0.6))
        events = stream_events(rec, signal(6.0, seed=seed), name, seed=seed)
        stable: list[str] = []
        for e in events:
            if isinstance(e, PartialEvent):
                words = e.stable.split()
                assert words[: len(stable)] == stable, (stable, e)
                assert e.text == " ".join(x for x in (e.stable, e.unstable) if x)
                stable = words
            else:
                assert isinstance(e, FinalEvent)
                if name == "greedy":
                    assert e.text.split()[: len(stable)] == stable
                checked += bool(stable)
                stable = []
    if name == "greedy":
        assert checked, "some utterance should have had a stable prefix"


def test_unknown_or_impossible_decoder_is_refused(lm_files):
    rec = recognizer(lm_files)
    with pytest.raises(ValueError, match="not available"):
        rec.new_stream(decoder="nope")
    lm, _piece_lex, phone_lex = lm_files
    phones = BeamDecoder(PhoneTable(PHONES), "phones", 0.04, beam_size=8, beam_threshold=PRUNE, lm=lm,
                         lexicon=phone_lex, lm_weight=0.5)
    with pytest.raises(ValueError, match="phone head"):
        StreamingRecognizer(tiny_model(), PieceTable(), decoders={"phones": phones})
    with pytest.raises(ValueError, match="needs a word LM"):
        BeamDecoder(PhoneTable(PHONES), "phones", 0.04, beam_size=8, beam_threshold=PRUNE)


def test_build_decoders_spells_lm_words_in_phones(lm_files, tmp_path):
    """build_decoders: 'beam' always; 'phones' from an ARPA LM through CMUdict when the model has a phone head."""
    lm, _, _ = lm_files

    class Encoding(Pieces):
        def encode(self, text: str) -> list[int]:
            return [PIECES.index(p) for p in PIECE_LEXICON.get(text, "<unk>").split()]

    assert set(build_decoders(tiny_model(), Encoding(), 0.04)) == {"beam"}
    decoders = build_decoders(tiny_phone_model(), Encoding(), 0.04, DecodingConfig(), lm=lm, work_dir=tmp_path)
    assert set(decoders) == {"beam", "phones"}
    lexicon = (tmp_path / "lm.phones.lexicon.txt").read_text()
    assert "CAT\tK AE T" in lexicon


def test_build_decoders_adds_lexicon_extra_words_to_the_lm_and_both_lexicons(lm_files, tmp_path):
    """`--lexicon-extra`: its words join the LM (extended ARPA in the work folder) and the phone
    lexicon, spelled as the file says (or by CMUdict / the G2P model); no LM: refused."""
    lm, _, _ = lm_files
    extra = tmp_path / "extra.txt"
    extra.write_text("BATS B AE T S\nSTAB\n")  # STAB: CMUdict S T AE B

    class Encoding(Pieces):
        def encode(self, text: str) -> list[int]:
            return [PIECES.index(p) for p in PIECE_LEXICON.get(text, "<unk>").split()]

    decoding = DecodingConfig(lexicon_extra=str(extra))
    decoders = build_decoders(tiny_phone_model(), Encoding(), 0.04, decoding, lm=lm, work_dir=tmp_path)
    assert decoders["phones"].options["lm"] == str(tmp_path / "lm.extra.arpa")
    lexicon = (tmp_path / "lm.extra.phones.lexicon.txt").read_text().splitlines()
    assert {"BATS\tB AE T S", "STAB\tS T AE B", "CAT\tK AE T"} <= set(lexicon)
    with pytest.raises(ValueError, match="--lexicon-extra .*needs? .*LM|pass --lm"):
        build_decoders(tiny_phone_model(), Encoding(), 0.04, decoding, lm=None, work_dir=tmp_path)
