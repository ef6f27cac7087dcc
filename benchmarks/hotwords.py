"""Hotword recall, false alarms and the WER cost of biasing, on the synthetic demo (issue 33).

    python benchmarks/hotwords.py --model exp/synthetic/all/final.pt --data data/synthetic \
        --out docs/results/hotwords/hotwords.json

**Targets** (20 by default): half *novel* words, names and places that no training sentence
holds (`NOVEL`, those the training text lacks), half *rare* words, read once in the training
text (drawn by `--seed`), all absent from the `test` split's transcripts.
**Hotword set**: `--per-word` sentences per target, each a `test` sentence with one of its
words (of 3+ letters) replaced by the target, rendered by the corpus's own renderer
(`mtspeech.data.synth.render`: espeak-ng / flite voices of the `test` speakers, its pauses and
its 30 dB noise), so they sound like the demo and differ from it only in the target word.
**List**: the 20 targets plus fillers, training words no `test` transcript holds, up to
`--list-size` (100) entries, each at `--boosts` (one run each).

For each beam decoder the checkpoint serves (`phones`, `beam`), without the list, with it at
each boost, and "added only": the list at a negligible boost, so that its words outside the
lexicon are merely added to it (at the LM back-off of `--lexicon-extra` words) and none is favoured:
- **recall**: occurrences of each target in the hypotheses of its own sentences / in their
  references;
- **false alarms**: occurrences of each target in the hypotheses of every other utterance
  (the hotword set's sentences of other targets, and `test`);
- **WER on `test`** without a list and with the 100 unrelated entries active (issue goal: at
  most 0.5 points worse), WER by `mtspeech.metrics` (the scoring `mtspeech evaluate` uses), the
  change with its 95 % paired-bootstrap interval over the test utterances (`evaluation/stats.py`);
- **cost**: decoding seconds per audio second with and without the list (one stream, this
  machine), and the seconds the list's build took (its lexicon trie; once per list).

The heads' log-probabilities come from the chunk-masked full forward at the server's chunk
(equal to streaming, `tests/streaming/test_streaming_decoders.py`), computed once per utterance;
each decoding condition feeds them to the decoder's per-utterance search, the server's code.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np

from _cli import run_main

# The "added only" run: the list at a boost too small to favour anything, so its only effect is
# that words outside the lexicon join it at the LM back-off of added words, as --lexicon-extra adds them.
ADDED_ONLY = 1e-9
# Names and places for the novel targets; those the training text holds are dropped.
NOVEL = ("ZANZIBAR OKONKWO TASHKENT MIRABEL KATMANDU NAIROBI GRETCHEN DUBROVNIK HELSINKI REYKJAVIK "
         "SAMARKAND TIMBUKTU GWENDOLYN YOLANDA WINNIPEG").split()


def add_arguments(ap) -> None:
    ap.add_argument("--model", required=True, help="checkpoint (with an embedded LM or --lm)")
    ap.add_argument("--data", required=True, help="the manifests' folder: train*.jsonl, test.jsonl")
    ap.add_argument("--corpus", default=None, help="the synthesized corpus (its synth.json; default DATA/corpus)")
    ap.add_argument("--lm", default="auto", help="word LM (as mtspeech serve --lm)")
    ap.add_argument("--targets", type=int, default=20, help="hotword targets, half novel, half rare")
    ap.add_argument("--per-word", type=int, default=3, help="sentences per target")
    ap.add_argument("--list-size", type=int, default=100, help="entries of the active list")
    ap.add_argument("--boosts", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="one run with the list per boost")
    ap.add_argument("--decoders", nargs="+", default=["phones", "beam"])
    ap.add_argument("--seed", type=int, default=33)
    ap.add_argument("--limit-test", type=int, default=None, help="first N test utterances only (smoke runs)")
    ap.add_argument("--out", default=None)


def _words(manifests) -> Counter:
    from mtspeech.data.manifest import read_manifest

    counts: Counter = Counter()
    for m in manifests:
        for u in read_manifest(m):
            counts.update((u.text or "").split())
    return counts


def plan_targets(train: Counter, test_texts: list[str], n: int, rng: random.Random) -> list[tuple[str, str]]:
    """(word, "novel" | "rare") targets, none in a `test` transcript."""
    in_test = {w for t in test_texts for w in t.split()}
    novel = [w for w in NOVEL if w not in train and w not in in_test][: n // 2]
    rare = sorted(w for w, c in train.items() if c == 1 and w.isalpha() and len(w) >= 6 and w not in in_test)
    rare = rng.sample(rare, n - len(novel))
    return [(w, "novel") for w in novel] + [(w, "rare") for w in rare]


def plan_sentences(targets, test_texts: list[str], per_word: int, rng: random.Random) -> list[tuple[str, str]]:
    """(target, sentence): a test sentence with one word of 3+ letters replaced by the target."""
    out = []
    for word, _kind in targets:
        for text in rng.sample(test_texts, per_word):
            words = text.split()
            slots = [i for i, w in enumerate(words) if len(w) >= 3] or list(range(len(words)))
            words[rng.choice(slots)] = word
            out.append((word, " ".join(words)))
    return out


def render_sentences(sentences, corpus: Path, seed: int) -> list[np.ndarray]:
    """float32 audio of each sentence, read by the `test` speakers in turn, as the corpus renders."""
    from mtspeech.data.synth import _Job, corpus_config, plan_corpus, render

    cfg = corpus_config(corpus)
    _speakers, plan, _ = plan_corpus(cfg)
    voices = list({spk.id: spk for _, spk, _ in plan["test"]}.values())
    out = []
    for k, (_word, text) in enumerate(sentences):
        job = _Job(k, "hotwords", f"hot-{k:04d}", "", text, voices[k % len(voices)], seed, cfg.noise_snr_db)
        out.append(render(job)[0].astype(np.float32) / 32768.0)
    return out


def head_log_probs(rec, audio: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per utterance, (T, V) log-probs of the ASR and phone heads (chunk-masked full forward)."""
    import torch

    from mtspeech.streaming.encoder import asr_task, phone_task

    heads = {"asr": asr_task(rec.model).name}
    if phone_task(rec.model) is not None:
        heads["phones"] = phone_task(rec.model).name
    out = []
    with torch.inference_mode():
        for wav in audio:
            enc = rec.model.encode(torch.from_numpy(wav)[None], torch.tensor([len(wav)]),
                                   rec.config.chunk_frames, rec.config.left_chunks)
            logits = rec.model.task_logits(enc)
            n = int(enc.lens[0])
            out.append({h: logits[task][0, :n].float().log_softmax(-1).numpy() for h, task in heads.items()})
    return out


def decode_all(decoder, log_probs: list[dict[str, np.ndarray]]) -> tuple[list[str], float]:
    """Each utterance through the decoder's per-utterance search → texts, seconds spent."""
    texts, t0 = [], time.perf_counter()
    for lp in log_probs:
        utt = decoder.begin()
        utt.push(lp[decoder.head], 0)
        texts.append(" ".join(w.word for w in utt.end().words))
    return texts, time.perf_counter() - t0


def _change_ci(without, with_list) -> list[float]:
    """95 % paired-bootstrap interval (over test utterances) of the WER change, in points."""
    from mtspeech.evaluation.stats import paired_bootstrap

    b = paired_bootstrap(without, with_list, n_resamples=1000, seed=0)
    return [round(100 * b.ci_low, 2), round(100 * b.ci_high, 2)]


def run(args) -> dict:
    import torch

    from mtspeech.data.geometry import SAMPLE_RATE
    from mtspeech.data.manifest import read_manifest
    from mtspeech.data.audio import load_audio
    from mtspeech.decoding.config import DecodingConfig
    from mtspeech.decoding.loader import load_recognizer
    from mtspeech.metrics import utterance_word_errors, wer
    from mtspeech.streaming.biased_beam import BiasedBeamDecoder
    from mtspeech.streaming.hotwords import parse_hotwords

    torch.set_num_threads(1)
    data, rng = Path(args.data), random.Random(args.seed)
    train = _words(sorted(data.glob("train*.jsonl")))
    test = [u for u in read_manifest(data / "test.jsonl") if u.text][: args.limit_test]
    test_texts = [u.text for u in test]
    targets = plan_targets(train, test_texts, args.targets, rng)
    sentences = plan_sentences(targets, test_texts, args.per_word, rng)
    in_test = {w for t in test_texts for w in t.split()}
    taken = {w for w, _ in targets}
    fillers = sorted(w for w in train if w.isalpha() and w not in in_test and w not in taken)
    entries = [w for w, _ in targets] + rng.sample(fillers, max(0, args.list_size - len(targets)))

    rec = load_recognizer(args.model, DecodingConfig(decoder="auto", lm=args.lm), "torch-eager")
    hot_audio = render_sentences(sentences, Path(args.corpus or data / "corpus"), args.seed)
    test_audio = [load_audio(u.audio).numpy() for u in test]
    hot_lp, test_lp = head_log_probs(rec, hot_audio), head_log_probs(rec, test_audio)
    hot_s = sum(len(a) for a in hot_audio) / SAMPLE_RATE
    test_s = sum(len(a) for a in test_audio) / SAMPLE_RATE

    from mtspeech.data.g2p import g2p_phones

    t0 = time.perf_counter()
    g2p_phones("QUOKKA")  # gruut loads its model on the first word: once per process, not per list
    g2p_load_s = time.perf_counter() - t0
    results = {}
    for name in args.decoders:
        if name not in rec.decoders:
            continue
        base = rec.decoders[name]
        t0 = time.perf_counter()
        if base.lexicon is not None:
            base.lexicon_entries()  # once per server: the lexicon in token ids, its unigrams
        lexicon_s = time.perf_counter() - t0
        runs, build_s = {}, {}
        for boost in [None, ADDED_ONLY, *args.boosts]:
            label = "without" if boost is None else "added only" if boost == ADDED_ONLY else f"boost {boost:g}"
            decoder = base
            if boost is not None:
                t0 = time.perf_counter()
                decoder = BiasedBeamDecoder(base, parse_hotwords([(w, boost) for w in entries]))
                build_s[label] = time.perf_counter() - t0
            hot_hyps, hot_t = decode_all(decoder, hot_lp)
            test_hyps, test_t = decode_all(decoder, test_lp)
            runs[label] = {"hot": hot_hyps, "test": test_hyps, "rtf": (hot_t + test_t) / (hot_s + test_s),
                           "test_wer": wer(test_texts, test_hyps).rate,
                           "errors": [(e.errors, e.ref_len) for e in utterance_word_errors(test_texts, test_hyps)]}
        table = []
        for word, kind in targets:
            row = {"word": word, "kind": kind,
                   "occurrences": sum(ref.split().count(word) for t, ref in sentences if t == word)}
            for label, r in runs.items():
                hits = alarms = 0
                for (target, ref), hyp in zip(sentences, r["hot"]):
                    n = hyp.split().count(word)
                    if target == word:
                        hits += min(n, ref.split().count(word))
                    else:
                        alarms += n
                alarms += sum(h.split().count(word) for h in r["test"])
                row[label] = {"hits": hits, "false_alarms": alarms}
            table.append(row)

        def recall(label, kind=None):
            rows = [r for r in table if kind in (None, r["kind"])]
            return sum(r[label]["hits"] for r in rows) / max(1, sum(r["occurrences"] for r in rows))

        results[name] = {
            "runs": {label: {"recall": recall(label), "recall_novel": recall(label, "novel"),
                             "recall_rare": recall(label, "rare"),
                             "false_alarms": sum(r[label]["false_alarms"] for r in table),
                             "test_wer": runs[label]["test_wer"],
                             "test_wer_change_points": 100 * (runs[label]["test_wer"] - runs["without"]["test_wer"]),
                             "test_wer_change_ci_points": _change_ci(runs["without"]["errors"], runs[label]["errors"]),
                             "rtf": runs[label]["rtf"], "list_build_s": build_s.get(label, 0.0)}
                     for label in runs},
            "lexicon_s": lexicon_s,
            "words": table,
            "examples": [{"target": t, "reference": ref, **{label: runs[label]["hot"][k] for label in runs}}
                         for k, (t, ref) in enumerate(sentences[:: args.per_word])],
        }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    digest = hashlib.sha256(Path(args.model).read_bytes()).hexdigest()[:12]
    return {"benchmark": "hotwords", "model": f"{args.model} (sha256 {digest})", "data": str(args.data),
            "commit": commit,
            "command": "python benchmarks/hotwords.py " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if v is not None),
            "settings": {"boosts": args.boosts, "list_size": len(entries), "targets": len(targets),
                         "per_word": args.per_word, "seed": args.seed, "lm": args.lm,
                         "beam_threshold": DecodingConfig.beam_threshold},
            "g2p_load_s": g2p_load_s,
            "hotword_set": {"utterances": len(sentences), "audio_s": round(hot_s, 2)},
            "test": {"utterances": len(test), "audio_s": round(test_s, 2)},
            "list": entries, "decoders": results}


def render_text(result: dict) -> str:
    s = result["settings"]
    lines = [f"{result['hotword_set']['utterances']} hotword sentences, {result['test']['utterances']} test "
             f"utterances; a list of {s['list_size']} entries holding the {s['targets']} targets",
             f"{'decoder':8s} {'run':10s} {'recall':>7s} {'novel':>7s} {'rare':>7s} {'FA':>4s} {'test WER':>9s} "
             f"{'change':>7s} {'95% CI':>15s} {'RTF':>7s} {'build s':>8s}"]
    for name, r in result["decoders"].items():
        for label, x in r["runs"].items():
            lines.append(f"{name:8s} {label:10s} {x['recall']:7.1%} {x['recall_novel']:7.1%} {x['recall_rare']:7.1%} "
                         f"{x['false_alarms']:4d} {x['test_wer']:9.2%} {x['test_wer_change_points']:+7.2f} "
                         f"{'[%+.2f, %+.2f]' % tuple(x['test_wer_change_ci_points']):>15s} "
                         f"{x['rtf']:7.4f} {x['list_build_s']:8.3f}")
    for name, r in result["decoders"].items():
        labels = list(r["runs"])
        lines += ["", f"{name}: hits / false alarms of each target, per run",
                  f"{'word':14s} {'kind':6s} {'n':>2s} " + " ".join(f"{label:>10s}" for label in labels)]
        for w in r["words"]:
            cells = " ".join(f"{w[label]['hits']:>5d} / {w[label]['false_alarms']:<2d}" for label in labels)
            lines.append(f"{w['word']:14s} {w['kind']:6s} {w['occurrences']:2d} {cells}".rstrip())
    return "\n".join(lines)


def main(argv=None) -> dict:
    return run_main(__doc__, add_arguments, run, render_text, argv)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
