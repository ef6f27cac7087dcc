"""The answers of the REST routes (serve/http.py): a file's finals as segments, subtitles
(SRT, WebVTT) or OpenAI's diarized shape, and whether the served model can label speakers."""

from __future__ import annotations

from mtspeech.serve import protocol as P
from mtspeech.serve.server import Server
from mtspeech.streaming import FinalEvent


def segments(finals: list[FinalEvent]) -> list[P.Segment]:
    return [P.Segment(id=i, start=f.start, end=f.end, text=f.text, words=P.words_out(f), speaker=f.speaker)
            for i, f in enumerate(finals)]


def tells_speakers(server: Server) -> bool:
    """Whether the served model has a speaker head its encoder step computes (speaker turns)."""
    rec = server.recognizer
    return rec.speaker is not None and "speaker" in rec.encoder_step.roles


def diarized(finals: list[FinalEvent], seconds: float) -> P.DiarizedTranscription:
    return P.DiarizedTranscription(duration=round(seconds, 3), text=" ".join(f.text for f in finals), segments=[
        P.DiarizedSegment(id=f"seg_{i:03d}", start=f.start, end=f.end, text=f.text, speaker=f.speaker or "unknown")
        for i, f in enumerate(finals)])


def timestamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def subtitles(finals: list[FinalEvent], vtt: bool) -> str:
    """SRT (numbered cues, comma before milliseconds) or WebVTT."""
    sep = "." if vtt else ","
    blocks = []
    for i, f in enumerate(finals):
        number = "" if vtt else f"{i + 1}\n"
        blocks.append(f"{number}{timestamp(f.start, sep)} --> {timestamp(f.end, sep)}\n{f.text}\n")
    return ("WEBVTT\n\n" if vtt else "") + "\n".join(blocks)
