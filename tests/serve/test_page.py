"""The microphone page in headless Chromium: a fake microphone (a WAV file) streams to the
server over the page's WebSocket and the transcript appears in the page (DevTools protocol)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time

import httpx
import pytest
import torch
import torchaudio
from websockets.asyncio.client import connect

from serve.app import create_app
from serve_helpers import live_server, signal, wav_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _page_state(devtools_port: int, timeout_s: float) -> dict:
    """Poll the page's transcript through the DevTools protocol until a final appears."""
    deadline = time.monotonic() + timeout_s
    target = None
    while target is None and time.monotonic() < deadline:
        try:
            pages = httpx.get(f"http://127.0.0.1:{devtools_port}/json/list", timeout=2).json()
            target = next((p for p in pages if p.get("type") == "page"), None)
        except httpx.HTTPError:
            await asyncio.sleep(0.2)
    assert target is not None, "Chromium exposed no page over DevTools"
    expr = ("JSON.stringify({finals: Array.from(document.querySelectorAll('#finals p')).map(p => p.lastChild.textContent),"
            " partial: document.getElementById('partial').textContent,"
            " status: document.getElementById('status').textContent})")
    state, msg_id = {}, 0
    async with connect(target["webSocketDebuggerUrl"], max_size=2**22) as cdp:
        while time.monotonic() < deadline:
            msg_id += 1
            await cdp.send(json.dumps({"id": msg_id, "method": "Runtime.evaluate",
                                       "params": {"expression": expr, "returnByValue": True}}))
            for _ in range(50):  # skip events until our answer
                reply = json.loads(await asyncio.wait_for(cdp.recv(), 5))
                if reply.get("id") == msg_id:
                    break
            value = reply.get("result", {}).get("result", {}).get("value")
            if value:
                state = json.loads(value)
                if state["finals"]:
                    return state
            await asyncio.sleep(0.5)
    return state


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_microphone_page_shows_transcript(recognizer, tmp_path):
    # The fake capture device loops this file; the page sends audio at the AudioContext's
    # rate (44.1 or 48 kHz) and the server resamples. Endpointing cuts finals as it loops.
    wav = signal(2.0, seed=11)
    wav48 = torchaudio.functional.resample(torch.from_numpy(wav), 16000, 48000).numpy()
    audio = tmp_path / "mic.wav"
    audio.write_bytes(wav_bytes(wav48, 48000))
    devtools = _free_port()
    with live_server(create_app(recognizer)) as (addr, _):
        proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
             f"--use-file-for-fake-audio-capture={audio}", "--autoplay-policy=no-user-gesture-required",
             f"--remote-debugging-port={devtools}", f"--user-data-dir={tmp_path / 'profile'}",
             "--no-first-run", f"http://{addr}/?autostart=1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            state = asyncio.run(_page_state(devtools, timeout_s=60))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert state.get("finals"), f"no final transcript on the page: {state}"
    assert state["status"].startswith("listening ("), state  # no error shown
    # Everything shown is made of the model's pieces (letters A-J; "<unk>" aside).
    shown = "".join(state["finals"]).replace(" ", "").replace("<unk>", "")
    assert shown and set(shown) <= set("ABCDEFGHIJ"), state
