"""Decoders over the wire: `decoder` in `start`, stable/unstable partials, `GET /v1/models`,
and `mtspeech serve`'s decoder flags."""

from __future__ import annotations

import argparse
import asyncio
import json

import openai
import pytest
from fastapi.testclient import TestClient
from websockets.asyncio.client import connect

from mtspeech.client import to_pcm16
from mtspeech.streaming import PartialEvent
from mtspeech.decoding.config import DecodingConfig, DecodingError
from mtspeech.decoding.loader import load_recognizer
from mtspeech.streaming.decoders import BeamDecoder
from mtspeech.serve import app as serve_app
from mtspeech.serve import protocol as P
from mtspeech.serve.app import create_app
from serve_helpers import (LM_TEXTS, live_server, lm_checkpoint, recv_all, signal, steady_settings, stream_messages,
                           tiny_recognizer)
from tiny_asr import PIECES

PRUNE = DecodingConfig.beam_threshold  # the served beam pruning


class Pieces:
    blank_id = 0
    vocab_size = len(PIECES)

    def id_to_piece(self, i: int) -> str:
        return PIECES[i]


@pytest.fixture(scope="module")
def beam_server():
    """A live server whose recognizer has a lexicon-free 'beam' decoder besides greedy."""
    rec = tiny_recognizer()
    rec.decoders["beam"] = BeamDecoder(Pieces(), "asr", rec.frame_shift_s, beam_size=8, beam_threshold=PRUNE)
    with live_server(create_app(rec, steady_settings())) as (addr, _server):
        yield addr, rec


@pytest.mark.parametrize("decoder", ["greedy", "beam"])
def test_decoder_per_stream_equals_in_process(beam_server, decoder):
    addr, rec = beam_server
    wav = signal(3.0, seed=4)
    msgs = asyncio.run(stream_messages(addr, wav, {"decoder": decoder, "endpointing": False}))
    finals = [m for m in msgs if m["type"] == "final"]
    expected = " ".join(f.text for f in rec.transcribe(wav, endpointing=False, decoder=decoder))
    assert expected and " ".join(f["text"] for f in finals) == expected
    partials = [m for m in msgs if m["type"] == "partial"]
    assert partials
    stable: list[str] = []
    for m in partials:
        assert set(m) == {"type", "text", "stable", "unstable"}
        assert m["text"] == " ".join(x for x in (m["stable"], m["unstable"]) if x)
        assert m["stable"].split()[: len(stable)] == stable  # one utterance: stable only extends
        stable = m["stable"].split()
    if decoder == "greedy":
        assert finals[0]["text"].split()[: len(stable)] == stable


def test_unavailable_decoder_is_a_bad_message_and_the_stream_goes_on(beam_server):
    addr, rec = beam_server
    wav = signal(1.5, seed=2)

    async def run():
        async with connect(f"ws://{addr}/v1/stream") as ws:
            await ws.send(json.dumps({"type": "start", "decoder": "phones"}))
            err = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "start", "decoder": "viterbi"}))
            err2 = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "start", "endpointing": False}))  # the server's default
            await ws.send(to_pcm16(wav))
            await ws.send(json.dumps({"type": "stop"}))
            return err, err2, await recv_all(ws)

    err, err2, msgs = asyncio.run(run())
    assert err["code"] == "bad_message" and "'phones' is not available" in err["message"]
    assert err2["code"] == "bad_message"
    assert msgs[-1] == {"type": "end"}
    assert " ".join(m["text"] for m in msgs if m["type"] == "final") == \
        " ".join(f.text for f in rec.transcribe(wav, endpointing=False))


def test_partial_message_round_trip():
    msg = P.event_message(PartialEvent("a b c", "a b", "c"))
    assert msg.model_dump() == {"type": "partial", "text": "a b c", "stable": "a b", "unstable": "c"}
    assert P.SERVER_MESSAGE.validate_python(msg.model_dump()) == msg
    assert P.CLIENT_MESSAGE.validate_python({"type": "start", "decoder": "beam"}).decoder == "beam"


def test_models_list_with_the_openai_client(make_server):
    addr, _app = make_server(api_key="sk-test")
    api = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="sk-test", max_retries=0, timeout=30)
    models = api.models.list()
    assert [m.id for m in models.data] == ["mtspeech"]
    m = models.data[0]
    assert m.object == "model" and m.owned_by == "mtspeech" and m.created > 0
    assert api.models.retrieve("mtspeech").id == "mtspeech"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("whisper-1")
    bad = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_models_list_shape(recognizer):
    with TestClient(create_app(recognizer, steady_settings())) as c:
        body = c.get("/v1/models").json()
    assert body["object"] == "list"
    assert body["data"] == [{"id": "mtspeech", "object": "model", "created": body["data"][0]["created"],
                             "owned_by": "mtspeech"}]


def test_serve_decoder_flags_are_checked_before_loading(tmp_path):
    parser = argparse.ArgumentParser()
    serve_app.add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path / "none.pt"), "--decoder", "phones"])
    assert args.decoder == "phones" and args.lm is None and args.beam_size == 20
    assert serve_app.main(args) == 2  # phones without an LM: a clear error, no server
    with pytest.raises(DecodingError, match="needs a word LM"):
        DecodingConfig(decoder="phones")
    with pytest.raises(DecodingError, match="does not exist"):
        load_recognizer(tmp_path / "none.pt", DecodingConfig(decoder="beam", lm=str(tmp_path / "missing.arpa")))
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "x.pt", "--decoder", "viterbi"])


def test_checkpoint_with_lm_auto_serves_every_decoder(tmp_path):
    """`serve --model X.pt --lm auto`: the trigram of the training transcripts (as `evaluate --lm
    auto` builds it), a piece lexicon for 'beam', CMUdict phones for 'phones'."""
    path = lm_checkpoint(tmp_path)
    rec = load_recognizer(path, DecodingConfig(decoder="phones", lm="auto", beam_size=4), "torch-eager")
    assert set(rec.decoders) == {"greedy", "beam", "phones"} and rec.default_decoder == "phones"
    wav = signal(1.5, seed=1)
    for name in rec.decoders:
        finals = rec.transcribe(wav, decoder=name)
        vocab = {w for t in LM_TEXTS for w in t.split()}
        if name != "greedy":  # closed vocabulary: the LM's words only
            assert all(w.word in vocab for f in finals for w in f.words)


def test_an_embedded_lm_makes_the_checkpoint_self_contained(tmp_path):
    """`mtspeech embed-lm X.pt`: afterwards `--lm auto` needs no training manifest on disk."""
    from mtspeech import cli
    from mtspeech.checkpoint import load_state
    from mtspeech.decoding.embedded_lm import LM_KEY, training_transcripts_lm
    from mtspeech.experiment import experiment_from_dict

    path = lm_checkpoint(tmp_path)  # and train.jsonl next to it
    assert cli.main(["embed-lm", str(path)]) == 0
    arpa = load_state(path)[LM_KEY]
    assert arpa.lstrip().startswith("\\data\\") and "HELLO" in arpa
    (tmp_path / "train.jsonl").unlink()  # the checkpoint travels alone
    rec = load_recognizer(path, DecodingConfig(decoder="phones", lm="auto", beam_size=4), "torch-eager")
    assert set(rec.decoders) == {"greedy", "beam", "phones"}
    exp = experiment_from_dict(load_state(path)["config"])
    lm = training_transcripts_lm(exp, tmp_path / "eval", 3, path)
    assert lm.read_text() == arpa
    with pytest.raises(ValueError, match="not an ARPA file"):
        cli.main(["embed-lm", str(path), "--lm", str(tmp_path / "model.pt")])


def test_decoder_auto_serves_the_best_decoder_the_checkpoint_allows(tmp_path):
    """`mtspeech serve --model X.pt` (decoder auto): greedy while the checkpoint carries no LM;
    words through the phone head once `mtspeech embed-lm` stored one; beam when the model has
    no phone head."""
    from mtspeech import cli

    parser = argparse.ArgumentParser()
    serve_app.add_arguments(parser)
    assert parser.parse_args(["--model", "x.pt"]).decoder == "auto"
    path = lm_checkpoint(tmp_path)  # and train.jsonl next to it
    bare = load_recognizer(path, DecodingConfig(decoder="auto"), "torch-eager")
    assert bare.default_decoder == "greedy" and set(bare.decoders) == {"greedy"}
    assert cli.main(["embed-lm", str(path)]) == 0
    rec = load_recognizer(path, DecodingConfig(decoder="auto", beam_size=4), "torch-eager")
    assert rec.default_decoder == "phones" and set(rec.decoders) == {"greedy", "beam", "phones"}
    assert rec.transcribe(signal(1.5, seed=1)) == rec.transcribe(signal(1.5, seed=1), decoder="phones")
