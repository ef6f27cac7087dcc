"""The batcher with several models (serve --adapted): a step holds one model's streams, and the
model whose stream has waited longest goes next, so a model with much audio never starves another."""

from __future__ import annotations

import asyncio

from mtspeech.serve.batcher import END, Batcher
from mtspeech.serve.routing import ServedModel
from mtspeech.streaming import FinalEvent
from serve_helpers import reference_text, signal, tiny_recognizer


def test_steps_alternate_between_models_and_each_decodes_its_own_streams():
    busy = ServedModel("busy", tiny_recognizer(seed=0))
    quiet = ServedModel("quiet", tiny_recognizer(seed=1))
    long_audio, short_audio = signal(4.0, seed=1), signal(1.0, seed=2)
    steps: list[tuple[str, int]] = []

    async def run():
        batcher = Batcher(busy.recognizer, max_batch_size=8, max_wait_ms=0, workers=0)
        work = batcher._work

        def spy(recognizer, streams, flush):
            steps.append(("busy" if recognizer is busy.recognizer else "quiet", len(streams) + len(flush)))
            return work(recognizer, streams, flush)

        batcher._work = spy
        batcher.start()  # the loop runs at the first await: every job below is in by then
        jobs = []
        for model, audio in ((busy, long_audio), (busy, long_audio), (quiet, short_audio)):
            stream = model.recognizer.new_stream(endpointing=False)
            model.recognizer.accept(stream, audio)  # all of it at once: many chunks ready
            jobs.append(batcher.add(stream, model=model))
            batcher.finish(jobs[-1])
        texts = []
        for job in jobs:
            finals = []
            while (out := await asyncio.wait_for(job.outbox.get(), 60)) is not END:
                if isinstance(out.item, FinalEvent):
                    finals.append(out.item.text)
            texts.append(" ".join(finals))
        await batcher.stop()
        return texts

    texts = asyncio.run(run())
    assert texts == [reference_text(busy.recognizer, long_audio)] * 2 + [reference_text(quiet.recognizer, short_audio)]
    assert reference_text(quiet.recognizer, long_audio) != texts[0]  # a stream on the wrong model would show
    assert steps[0] == ("busy", 2)  # the busy model's two streams in one step
    models = [model for model, _ in steps]
    assert models[:4] == ["busy", "quiet", "busy", "quiet"]  # each model's turn comes as it waits longest
    last_quiet = max(i for i, model in enumerate(models) if model == "quiet")
    assert last_quiet < len(models) / 2  # the quiet model was done long before the busy one ran dry


def _first_step(streams: int, with_audio: int, batch_target: int | None = None) -> tuple[float, int]:
    """Seconds until a batcher allowed to wait 2 s launches its first step, and that step's size,
    for `streams` open streams of which the first `with_audio` have audio."""
    model = ServedModel("base", tiny_recognizer(seed=0))

    async def run():
        batcher = Batcher(model.recognizer, max_batch_size=8, max_wait_ms=2000, workers=0, batch_target=batch_target)
        launched = []
        work = batcher._work

        def spy(recognizer, batch, flush):
            launched.append((asyncio.get_running_loop().time(), len(batch)))
            return work(recognizer, batch, flush)

        batcher._work = spy
        batcher.start()
        jobs = [batcher.add(model.recognizer.new_stream(endpointing=False), model=model) for _ in range(streams)]
        t0 = asyncio.get_running_loop().time()
        for job in jobs[:with_audio]:
            model.recognizer.accept(job.stream, signal(1.0, seed=1))
            batcher.notify(job)
        while not launched and asyncio.get_running_loop().time() - t0 < 5:
            await asyncio.sleep(0.01)
        await batcher.stop()
        return (launched[0][0] - t0, launched[0][1]) if launched else (float("inf"), 0)

    return asyncio.run(run())


def test_a_step_waits_for_company_only_while_some_can_come_and_only_up_to_the_batch_target():
    """max_wait_ms buys fuller batches while other streams' chunks may still come; a lone stream
    is stepped at once, and so is a batch that has reached batch_target."""
    assert _first_step(1, 1)[0] < 0.5  # no other stream: no wait
    delay, size = _first_step(2, 1)
    assert 1.5 < delay < 5 and size == 1  # the idle second stream could have joined: waited it out
    delay, size = _first_step(3, 2, batch_target=2)
    assert delay < 0.5 and size == 2  # the target reached: no wait for the third
    assert _first_step(3, 2)[0] > 1.5  # without a target (the batch's maximum, 8) it waits
