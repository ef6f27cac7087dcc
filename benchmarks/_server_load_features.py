"""Feature sets of the server-load benchmark: what a stream's `start` asks for beyond plain
transcripts, and the cost row that compares them with plain streams (issue 33, "Cost").

`server_load.py --features plain,diarization+hotwords100` runs every level once per feature set,
against the same server process, interleaved within each repeat (N=1 plain, N=1 with the
features, N=2 plain, ...; odd repeats in the reverse order, so a drift of the machine's load
favours neither). A feature set is `plain` or `+`-joined features:

  diarization    `"speakers": true`: speaker turns (finals labelled, `speaker_change` messages)
  hotwordsN      `"hotwords"`: N unrelated words (`unrelated_hotwords`) at the default boost,
                 in the documented format (docs/server.md, Hotwords); needs a beam decoder
                 (`--decoder beam|phones|auto` with an LM, or `--decoder beam --lm none`)

The cost of a feature set at N streams is the server's CPU seconds per audio second
(`rtf_cpu`, server_load.py's definition) and its ratio to the plain level of the same N and
repeat: measured minutes apart on the same server, so both share the machine's state. The
server builds a hotword list once and keeps it (`StreamingRecognizer.bias`); that build falls in
the warm-up, which runs one utterance per feature set before the levels (with `--workers`, a
worker the warm-up missed builds it in its first level: the median over repeats discounts that).
"""

from __future__ import annotations

import json
import random
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

PLAIN = "plain"
_HOTWORDS = re.compile(r"hotwords(\d+)")


@dataclass(frozen=True)
class FeatureSet:
    """One kind of stream in a load run: its name (as given to --features) and what its `start` asks for."""

    name: str
    speakers: bool = False
    hotwords: tuple[str, ...] = ()

    def start_fields(self) -> dict:
        """The fields this feature set adds to the `start` message."""
        from mtspeech.streaming.hotwords import DEFAULT_BOOST

        fields: dict = {}
        if self.speakers:
            fields["speakers"] = True
        if self.hotwords:
            fields["hotwords"] = [{"phrase": w, "boost": DEFAULT_BOOST} for w in self.hotwords]
        return fields

    def stream_options(self) -> dict:
        """`StreamingRecognizer.new_stream` keywords for a local replay: what the server makes of
        `start_fields` (through the protocol's own `StartMessage`, as serve/ws.py does)."""
        from mtspeech.serve.protocol import StartMessage

        start = StartMessage(type="start", **self.start_fields())
        speaker_turns, _ = start.speaker_turns()
        return {"speaker_turns": speaker_turns, "hotwords": start.hotword_pairs()}

    def describe(self) -> dict:
        return {"name": self.name, "speakers": self.speakers, "hotwords": list(self.hotwords)}


def words_of_manifest(path: str | Path) -> set[str]:
    """Upper-case words of every transcript in a JSONL manifest (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return set()
    words: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            words.update(str(json.loads(line).get("text") or "").upper().split())
    return words


def unrelated_hotwords(n: int, exclude: set[str], seed: int = 0) -> tuple[str, ...]:
    """`n` CMUdict words of 4+ letters that `exclude` (the test sentences' words) lacks, drawn
    with `seed`: a list that biases the search without ever being said."""
    from mtspeech.data.lexicon import cmu_dictionary

    pool = sorted(w for w in cmu_dictionary() if w.isalpha() and len(w) >= 4 and w not in exclude)
    return tuple(random.Random(seed).sample(pool, n))


def parse_features(spec: str, exclude: set[str], seed: int = 0) -> list[FeatureSet]:
    """`plain,diarization+hotwords100` → FeatureSets, plain first. SystemExit naming the
    offending entry on an unknown feature, a repeated set, an out-of-range hotword count, or a
    list without `plain` beside other sets (the cost is a ratio to plain streams of the same run)."""
    from mtspeech.streaming.hotwords import MAX_HOTWORDS

    out: list[FeatureSet] = []
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            raise SystemExit(f"--features {spec!r}: an empty entry")
        if any(f.name == name for f in out):
            raise SystemExit(f"--features {spec!r}: {name!r} given twice")
        if name == PLAIN:
            out.append(FeatureSet(PLAIN))
            continue
        speakers, hotwords = False, ()
        for part in name.split("+"):
            match = _HOTWORDS.fullmatch(part)
            if part == "diarization" and not speakers:
                speakers = True
            elif match and not hotwords and 1 <= int(match.group(1)) <= MAX_HOTWORDS:
                hotwords = unrelated_hotwords(int(match.group(1)), exclude, seed)
            else:
                raise SystemExit(f"--features: {part!r} in {name!r}: expected 'plain' or features joined by '+' "
                                 f"(diarization, hotwordsN with 1 <= N <= {MAX_HOTWORDS}), each once")
        out.append(FeatureSet(name, speakers, hotwords))
    if len(out) > 1 and out[0].name != PLAIN:
        if not any(f.name == PLAIN for f in out):
            raise SystemExit(f"--features {spec!r}: include 'plain': a feature's cost is its ratio to plain "
                             "streams measured in the same run")
        out.sort(key=lambda f: f.name != PLAIN)
    return out


def run_order(features: list[FeatureSet], repeat: int) -> list[FeatureSet]:
    """The feature sets in the order repeat `repeat` runs them: as given, reversed on odd repeats."""
    return list(features) if repeat % 2 == 0 else list(reversed(features))


def cost_rows(levels: list[dict]) -> list[dict]:
    """Per feature set and stream count, over its repeats: server CPU seconds per audio second
    (median and range), its ratio to the plain level of the same N and repeat (median and
    range), the worst p95 latencies, errors, whether every repeat kept up, and what the streams
    received of their features (speaker changes, finals carrying a speaker)."""
    plain = {(lv["streams"], lv["repeat"]): lv for lv in levels if lv.get("features", PLAIN) == PLAIN}
    groups: dict[tuple[str, int], list[dict]] = {}
    for lv in levels:
        groups.setdefault((lv.get("features", PLAIN), lv["streams"]), []).append(lv)
    rows = []
    for (name, n), runs in groups.items():
        cpu = [lv["rtf_cpu"] for lv in runs if lv.get("rtf_cpu")]
        ratios = [lv["rtf_cpu"] / base["rtf_cpu"] for lv in runs
                  if lv.get("rtf_cpu") and (base := plain.get((n, lv["repeat"]))) and base.get("rtf_cpu")]
        worst = lambda key: max((lv[key] for lv in runs if lv.get(key) is not None), default=None)  # noqa: E731
        rows.append({"features": name, "streams": n, "repeats": len(runs),
                     "cpu_s_per_audio_s": _median(cpu), "cpu_s_per_audio_s_range": _range(cpu),
                     "vs_plain": _median(ratios), "vs_plain_range": _range(ratios),
                     "final_latency_p95_s": worst("final_latency_p95_s"),
                     "partial_latency_p95_s": worst("partial_latency_p95_s"),
                     "errors": sum(lv.get("errors", 0) for lv in runs),
                     "keeps_up": all(lv.get("keeps_up") for lv in runs),
                     **{k: sum(lv.get(k, 0) for lv in runs) for k in ("finals", "finals_with_speaker",
                                                                      "speaker_changes")}})
    return rows


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 4) if xs else None


def _range(xs: list[float]) -> list[float | None]:
    return [round(min(xs), 4), round(max(xs), 4)] if xs else [None, None]


def render_costs(result: dict) -> list[str]:
    """The cost table of a run with feature sets (no lines for a plain-only run)."""
    rows, sets = result.get("feature_costs"), result.get("feature_sets") or []
    if not rows:
        return []
    what = "; ".join(f"{f['name']}: " + (", ".join(filter(None, [
        "speaker turns" if f["speakers"] else "", f"{len(f['hotwords'])} hotwords" if f["hotwords"] else ""]))
        or "transcripts only") for f in sets)
    lines = [f"cost per feature set, each level run once per set against the same server, interleaved ({what}); "
             "CPU s per audio s and its ratio to plain at the same N and repeat: median [min, max] over repeats",
             f"{'features':<28} {'N':>4} {'runs':>4} {'cpu-s/audio-s':>22} {'vs plain':>20} {'final p95':>9} "
             f"{'partial p95':>11} {'errors':>6} {'keeps up':>8} {'speaker changes':>15} {'finals labelled':>15}"]
    for r in rows:
        lo, hi = r["cpu_s_per_audio_s_range"]
        vlo, vhi = r["vs_plain_range"]
        cpu = "-" if r["cpu_s_per_audio_s"] is None else f"{r['cpu_s_per_audio_s']:.4f} [{lo:.4f}, {hi:.4f}]"
        vs = "-" if r["vs_plain"] is None else f"{r['vs_plain']:.2f}x [{vlo:.2f}, {vhi:.2f}]"
        lines.append(f"{r['features']:<28} {r['streams']:>4} {r['repeats']:>4} {cpu:>22} {vs:>20} "
                     f"{_s(r['final_latency_p95_s']):>9} {_s(r['partial_latency_p95_s']):>11} {r['errors']:>6} "
                     f"{'yes' if r['keeps_up'] else 'NO':>8} {r['speaker_changes']:>15} "
                     f"{str(r['finals_with_speaker']) + '/' + str(r['finals']):>15}")
    return lines


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
