"""`mtspeech synth`: the synthetic corpus, its extra voices and its noisy twins, from the command line.

The command sits above the modules it drives (`synth.py`: the corpus; `new_voices.py`:
test-voices and train-voices next to it; `noisy_twins.py`: the noisy, reverberant and
telephone twins; `final_test.py`: test-final, the final test set, with its twins; `adapt_dev.py`: adapt-dev,
new voices to tune adaptation on). It lived in
`synth.py` until `new_voices.py`, which builds on synth's plan and renderer, made the two
import each other.
"""

from __future__ import annotations

import argparse
import json
import logging

from mtspeech.data.adapt_dev import ADAPT_DEV_SEED  # no torch behind these two: `synth --help` stays quick
from mtspeech.data.final_test import FINAL_SEED
from mtspeech.data.synth import SynthConfig, synthesize_corpus

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig()
    parser.add_argument("--out", required=True, help="output folder (the corpus root)")
    parser.add_argument("--hours", type=float, default=d.hours, help="total audio (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--noise-snr", type=float, default=d.noise_snr_db,
                        help="white noise at this SNR in dB (default %(default)s)")
    parser.add_argument("--no-noise", action="store_true", help="clean audio (no added noise)")
    parser.add_argument("--speakers", type=int, default=d.speakers,
                        help="speakers in total (default %(default)s)")
    parser.add_argument("--unseen-speakers", type=int, default=d.unseen_speakers,
                        help="of which held out for test-unseen (default %(default)s)")
    parser.add_argument("--test-engine-speakers", type=int, default=d.test_engine_speakers,
                        help="test-engine speakers: festival's voices, then conversions of them "
                             "(default %(default)s)")
    parser.add_argument("--train-readings", type=int, default=d.train_readings,
                        help="speakers reading each training sentence (default %(default)s: the most "
                             "distinct sentences for the hours)")
    parser.add_argument("--vocab-words", type=int, default=d.vocab_words,
                        help="closed vocabulary: the N most frequent words of the sentence pool "
                             "(default: every word; 0 = every word)")
    parser.add_argument("--noisy-twins", action="store_true",
                        help="also write test and test-unseen at 10 and 0 dB SNR (test-snr10, ...), through "
                             "rooms (test-room, ...), and dev and test through a telephone channel (dev-phone, "
                             "test-phone)")
    parser.add_argument("--twins-only", action="store_true",
                        help="only write the twins (noisy, room and telephone) of the corpus already in --out")
    parser.add_argument("--phone-twins-only", action="store_true",
                        help="only write the telephone twins (dev-phone, test-phone: 8 kHz, 300-3400 Hz, "
                             "mu-law) of the corpus already in --out")
    parser.add_argument("--voices-only", action="store_true",
                        help="only write test-voices (more held-out voices, for speaker verification) "
                             "next to the corpus already in --out")
    parser.add_argument("--voice-speakers", type=int, default=24,
                        help="test-voices: speakers (default %(default)s)")
    parser.add_argument("--voice-utterances", type=int, default=8,
                        help="test-voices: utterances per speaker (default %(default)s)")
    parser.add_argument("--train-voices-only", action="store_true",
                        help="only write train-voices (more training speakers, on voice variants no "
                             "other split uses) next to the corpus already in --out")
    parser.add_argument("--train-voice-speakers", type=int, default=30,
                        help="train-voices: speakers (default %(default)s)")
    parser.add_argument("--train-voice-utterances", type=int, default=16,
                        help="train-voices: utterances per speaker (default %(default)s)")
    parser.add_argument("--final-only", action="store_true",
                        help="only write test-final (the final test set: new sentences, new voices, noisy "
                             "and room twins; scored once, never tuned on) next to the corpus already in --out")
    parser.add_argument("--final-seed", type=int, default=FINAL_SEED,
                        help="test-final's seed (default %(default)s: the documented one; another seed is "
                             "another final test set)")
    parser.add_argument("--final-speakers", type=int, default=16, help="test-final: speakers (default %(default)s)")
    parser.add_argument("--final-utterances", type=int, default=16,
                        help="test-final: utterances per speaker, each a sentence of its own (default %(default)s)")
    parser.add_argument("--adapt-dev-only", action="store_true",
                        help="only write adapt-dev (new voices reading dev sentences, to tune `mtspeech adapt` "
                             "on; no other split has them) next to the corpus already in --out")
    parser.add_argument("--adapt-dev-seed", type=int, default=ADAPT_DEV_SEED,
                        help="adapt-dev's seed (default %(default)s: the documented one)")
    parser.add_argument("--adapt-dev-speakers", type=int, default=12, help="adapt-dev: speakers (default %(default)s)")
    parser.add_argument("--adapt-dev-utterances", type=int, default=30,
                        help="adapt-dev: utterances per speaker, distinct dev sentences (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from mtspeech.data.adapt_dev import synthesize_adapt_dev
    from mtspeech.data.final_test import synthesize_final
    from mtspeech.data.new_voices import synthesize_train_voices, synthesize_voices
    from mtspeech.data.noisy_twins import make_noisy_twins, make_phone_twins

    if args.final_only:
        try:
            summary = synthesize_final(args.out, args.final_speakers, args.final_utterances, seed=args.final_seed,
                                       jobs=args.jobs, progress=not args.no_progress)
        except (ValueError, FileNotFoundError) as e:  # too small a corpus, or none: say so, no traceback
            log.error("mtspeech synth --final-only: %s", e)
            return 2
        print(json.dumps({k: v for k, v in summary.items() if k != "voices"}, indent=2))
        return 0
    if args.adapt_dev_only:
        try:
            summary = synthesize_adapt_dev(args.out, args.adapt_dev_speakers, args.adapt_dev_utterances,
                                           seed=args.adapt_dev_seed, jobs=args.jobs, progress=not args.no_progress)
        except (ValueError, FileNotFoundError) as e:
            log.error("mtspeech synth --adapt-dev-only: %s", e)
            return 2
        print(json.dumps({k: v for k, v in summary.items() if k != "voices"}, indent=2))
        return 0
    if args.voices_only or args.train_voices_only:
        make, sizes = ((synthesize_train_voices, (args.train_voice_speakers, args.train_voice_utterances))
                       if args.train_voices_only else (synthesize_voices, (args.voice_speakers, args.voice_utterances)))
        summary = make(args.out, *sizes, jobs=args.jobs, progress=not args.no_progress)
        print(json.dumps({k: v for k, v in summary.items() if k != "voices"}, indent=2))
        return 0
    if args.phone_twins_only:
        print(json.dumps(make_phone_twins(args.out, seed=args.seed, progress=not args.no_progress), indent=2))
        return 0
    if args.twins_only:
        twins = make_noisy_twins(args.out, seed=args.seed, progress=not args.no_progress)
        twins.update(make_phone_twins(args.out, seed=args.seed, progress=not args.no_progress))
        print(json.dumps(twins, indent=2))
        return 0
    snr = None if args.no_noise else args.noise_snr
    cfg = SynthConfig(hours=args.hours, seed=args.seed, speakers=args.speakers,
                      unseen_speakers=args.unseen_speakers, test_engine_speakers=args.test_engine_speakers,
                      train_readings=args.train_readings,
                      noise_snr_db=snr, jobs=args.jobs,
                      vocab_words=args.vocab_words or None,
                      progress=not args.no_progress)
    summary = synthesize_corpus(args.out, cfg)
    if args.noisy_twins:
        summary["noisy_twins"] = make_noisy_twins(args.out, seed=args.seed, progress=not args.no_progress)
        summary["phone_twins"] = make_phone_twins(args.out, seed=args.seed, progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0
