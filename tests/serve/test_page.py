"""The microphone page in headless Chromium (DevTools protocol), one browser session end to end:
a fake microphone (a WAV file) streams over the page's WebSocket; the page shows finals, the
stable part of partials in black and the unstable tail in grey, and a speech-activity strip fed
by the VAD head; then a chosen file is transcribed with word times and low-confidence words
marked; then the transcript downloads as .txt and .srt."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import torch
import torchaudio
from websockets.asyncio.client import connect

from mtspeech.serve.app import create_app
from serve_helpers import live_server, signal, wav_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
LOW_CONFIDENCE = 0.5  # the page's threshold (serve/static/index.html)
BLACK = "rgb(0, 0, 0)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevTools:
    """A minimal DevTools-protocol client: `call` a method, skipping events until its answer."""

    def __init__(self, ws) -> None:
        self.ws, self.next_id = ws, 0

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def until(self, expression: str, timeout_s: float, what: str):
        """Poll a JS expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await self.js(expression)
            if value:
                return value
            await asyncio.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}: {await self.js(STATE)}")


STATE = """JSON.stringify({
  finals: Array.from(document.querySelectorAll('#finals p .text')).map(e => e.textContent),
  stable: document.querySelector('#partial .stable')?.textContent ?? null,
  unstable: document.querySelector('#partial .unstable')?.textContent ?? null,
  stableColor: document.querySelector('#partial .stable') && getComputedStyle(document.querySelector('#partial .stable')).color,
  unstableColor: document.querySelector('#partial .unstable') && getComputedStyle(document.querySelector('#partial .unstable')).color,
  finalColor: document.querySelector('#finals p .text') && getComputedStyle(document.querySelector('#finals p .text')).color,
  frames: Number(document.getElementById('activity').dataset.frames),
  speechFrames: Number(document.getElementById('activity').dataset.speechFrames),
  status: document.getElementById('status').textContent})"""

WORDS = """JSON.stringify(Array.from(document.querySelectorAll('#finals .word')).map(w => ({
  word: w.textContent, start: Number(w.dataset.start), end: Number(w.dataset.end),
  confidence: Number(w.dataset.confidence), low: w.classList.contains('low'),
  background: getComputedStyle(w).backgroundColor})))"""


@contextlib.contextmanager
def _browser(mic: Path, devtools_port: int, profile: Path, url: str):
    """Headless Chromium on `url`, its fake microphone playing `mic`, DevTools on `devtools_port`;
    stopped (killed if it does not exit) when the block ends."""
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
         f"--use-file-for-fake-audio-capture={mic}", "--autoplay-policy=no-user-gesture-required",
         f"--remote-debugging-port={devtools_port}", f"--user-data-dir={profile}", "--no-first-run", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _devtools_page(devtools_port: int) -> dict:
    """Chromium's page target over DevTools, once it exposes one (within 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            pages = httpx.get(f"http://127.0.0.1:{devtools_port}/json/list", timeout=2).json()
            target = next((p for p in pages if p.get("type") == "page"), None)
            if target is not None:
                return target
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("Chromium exposed no page over DevTools")


async def _page_session(devtools_port: int, addr: str, upload: Path, downloads: Path) -> dict:
    target = await _devtools_page(devtools_port)
    browser_url = httpx.get(f"http://127.0.0.1:{devtools_port}/json/version", timeout=2).json()["webSocketDebuggerUrl"]
    out: dict = {"partials": []}
    async with connect(target["webSocketDebuggerUrl"], max_size=2**22) as ws:
        page = DevTools(ws)
        # 1. the microphone: finals, partials (stable black, unstable grey), the activity strip
        deadline = time.monotonic() + 60
        state: dict = {}
        while time.monotonic() < deadline:
            value = await page.js(STATE)  # None while the page is still loading
            state = json.loads(value) if value else {}
            if not state:
                await asyncio.sleep(0.2)
                continue
            if state["unstable"] or state["stable"]:
                out["partials"].append(state)
            if state["finals"] and state["frames"] > 0 and out["partials"]:
                break
            await asyncio.sleep(0.2)
        out["live"] = state
        await page.js("document.getElementById('stop').click()")
        await page.until("document.getElementById('status').textContent === 'done'", 20, "the stream to end")
        # 2. a chosen file (the file input; dropping one calls the same function)
        doc = await page.call("DOM.getDocument")
        node = await page.call("DOM.querySelector", nodeId=doc["root"]["nodeId"], selector="#file")
        await page.call("DOM.setFileInputFiles", files=[str(upload)], nodeId=node["nodeId"])
        await page.until("document.getElementById('status').textContent.startsWith('transcribed')", 30,
                         "the file's transcript")
        out["file_state"] = json.loads(await page.js(STATE))
        out["title"] = await page.js("document.getElementById('title').textContent")
        out["words"] = json.loads(await page.js(WORDS))
        # 3. downloads, saved by the browser into `downloads`
        async with connect(browser_url, max_size=2**22) as bws:
            await DevTools(bws).call("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
            await page.js("document.getElementById('download-txt').click()")
            await page.js("document.getElementById('download-srt').click()")
            for _ in range(100):
                if (downloads / "transcript.txt").exists() and (downloads / "transcript.srt").exists():
                    break
                await asyncio.sleep(0.1)
    return out


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_microphone_page_live_file_and_downloads(recognizer, tmp_path):
    # The fake capture device loops this file; the page sends audio at the AudioContext's
    # rate (44.1 or 48 kHz) and the server resamples. Endpointing cuts finals as it loops.
    wav = signal(2.0, seed=11)
    wav48 = torchaudio.functional.resample(torch.from_numpy(wav), 16000, 48000).numpy()
    mic = tmp_path / "mic.wav"
    mic.write_bytes(wav_bytes(wav48, 48000))
    upload = tmp_path / "upload.wav"
    upload.write_bytes(wav_bytes(signal(3.0, seed=12)))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    devtools = _free_port()
    with live_server(create_app(recognizer)) as (addr, _):
        expected = httpx.post(f"http://{addr}/v1/transcribe", content=upload.read_bytes(), timeout=30).json()
        with _browser(mic, devtools, tmp_path / "profile", f"http://{addr}/?autostart=1"):
            out = asyncio.run(_page_session(devtools, addr, upload, downloads))

    live = out["live"]
    assert live["finals"], f"no final transcript on the page: {live}"
    # Everything shown is made of the model's pieces (letters A-J; "<unk>" aside).
    shown = "".join(live["finals"]).replace(" ", "").replace("<unk>", "")
    assert shown and set(shown) <= set("ABCDEFGHIJ"), live
    # partials: the stable prefix in black, the unstable tail in grey; finals in black
    assert out["partials"], "no partial was shown"
    for p in out["partials"]:
        assert p["stableColor"] == BLACK and p["unstableColor"] not in (BLACK, None), p
    assert live["finalColor"] == BLACK
    # the activity strip: the VAD head's p(speech) for every 40 ms frame decoded so far
    assert 0 <= live["speechFrames"] <= live["frames"] and live["frames"] >= 10, live

    # the file: exactly the server's words and times; low-confidence words marked, only those
    assert out["title"] == "file: upload.wav"
    want = [w for seg in expected["segments"] for w in seg["words"]]
    assert want, expected
    got = out["words"]
    assert [(w["word"], w["start"], w["end"]) for w in got] == [(w["word"], w["start"], w["end"]) for w in want]
    assert [w["low"] for w in got] == [w["confidence"] < LOW_CONFIDENCE for w in want]
    for w in got:  # marked words look different from the others
        assert (w["background"] != "rgba(0, 0, 0, 0)") == w["low"], w
    assert out["file_state"]["finals"] == [seg["text"] for seg in expected["segments"]]

    # downloads: the transcript shown, as text and as SubRip cues with the segments' times
    txt = (downloads / "transcript.txt").read_text()
    assert txt.splitlines() == [seg["text"] for seg in expected["segments"]]
    srt = (downloads / "transcript.srt").read_text().strip().split("\n\n")
    assert len(srt) == len(expected["segments"])
    for i, (cue, seg) in enumerate(zip(srt, expected["segments"])):
        number, times, text = cue.split("\n")
        assert number == str(i + 1) and text == seg["text"]
        start, end = (_srt_seconds(t) for t in times.split(" --> "))
        assert start == pytest.approx(seg["start"], abs=1e-3) and end == pytest.approx(seg["end"], abs=1e-3)


def _srt_seconds(stamp: str) -> float:
    hms, ms = stamp.split(",")
    h, m, s = (int(x) for x in hms.split(":"))
    return 3600 * h + 60 * m + s + int(ms) / 1000


SPEAKER_WORDS = """JSON.stringify({
  words: Array.from(document.querySelectorAll('#finals .word')).map(w => ({
    speaker: w.dataset.speaker ?? null, color: getComputedStyle(w).color})),
  labels: Array.from(document.querySelectorAll('#finals small.speaker')).map(e => e.textContent),
  speaking: document.getElementById('speaking').textContent})"""


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_page_colours_words_by_speaker(tmp_path):
    """`?speakers=1` asks for speaker turns; each word takes its speaker's colour. The server's
    VAD and speaker heads are scripted (a random model's speaker head tells no voices apart,
    tests/serve/test_speaker_turns.py): two voices alternate with pauses, whatever the mic says."""
    from tiny_asr import ScriptedSpeaker, ScriptedVAD, conversation, tiny_recognizer

    _, speech, voices = conversation([(0, 3.0), (None, 1.6), (1, 3.0), (None, 1.6)] * 10)
    rec = tiny_recognizer()
    rec.vad, rec.speaker = ScriptedVAD(speech), ScriptedSpeaker(voices)
    mic = tmp_path / "mic.wav"
    wav = signal(2.0, seed=11)
    mic.write_bytes(wav_bytes(torchaudio.functional.resample(torch.from_numpy(wav), 16000, 48000).numpy(), 48000))
    devtools = _free_port()

    async def session() -> dict:
        target = await _devtools_page(devtools)
        async with connect(target["webSocketDebuggerUrl"], max_size=2**22) as ws:
            page = DevTools(ws)
            await page.until("document.querySelectorAll('#finals small.speaker').length >= 2 && "
                             "new Set(Array.from(document.querySelectorAll('#finals small.speaker'))"
                             ".map(e => e.textContent)).size >= 2", 60, "finals of two speakers")
            return json.loads(await page.js(SPEAKER_WORDS))

    with live_server(create_app(rec)) as (addr, _):
        with _browser(mic, devtools, tmp_path / "profile", f"http://{addr}/?autostart=1&speakers=1"):
            out = asyncio.run(session())

    assert out["labels"][:2] == ["S1", "S2"] and out["speaking"].startswith("speaking: S")
    colours: dict[str, set] = {}
    for w in out["words"]:
        assert w["speaker"] in ("S1", "S2"), w
        colours.setdefault(w["speaker"], set()).add(w["color"])
    assert set(colours) == {"S1", "S2"} and all(len(c) == 1 for c in colours.values()), colours
    assert colours["S1"] != colours["S2"] and BLACK not in colours["S1"] | colours["S2"]
