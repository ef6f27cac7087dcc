"""Session fixtures shared by every test folder: a tiny synthetic corpus and its manifests.

Generated once per test session (a few seconds on two cores): ~55 s of audio, 6 speakers
(4 seen: espeak-ng, a flite voice and a converted espeak-ng voice; 2 held out) in train /
dev / test / test-unseen, and 2 festival speakers in test-engine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mtspeech.data.librispeech import prepare_librispeech
from mtspeech.data.synth import SynthConfig, synthesize_corpus

def _hide_lazy_modules_from_hypothesis() -> None:
    """Hypothesis collects constants from every module in `sys.modules` (at collection and
    before the first draw) with `getattr(module, "__file__", None)`. On speechbrain's lazy
    modules (imported through mtspeech.tasks.speaker) that lookup imports the target:
    `speechbrain.k2_integration` raises ImportError without k2, an INTERNALERROR at collection
    or a failed draw. A class-level `__file__ = None` answers the lookup without importing
    (inspect.getmodule, which speechbrain guards the same way, skips such modules too); any
    real attribute still goes through the lazy `__getattr__`."""
    import speechbrain.utils.importutils as importutils

    if "__file__" not in vars(importutils.LazyModule):
        importutils.LazyModule.__file__ = None


_hide_lazy_modules_from_hypothesis()  # at import: hypothesis's pytest plugin scans at collection

TINY_SYNTH = SynthConfig(
    hours=0.015, seed=1234, speakers=6, unseen_speakers=2, noise_snr_db=30.0,
    dev_fraction=0.1, test_fraction=0.1, unseen_fraction=0.1, test_engine_speakers=2,
    test_engine_fraction=0.1, jobs=2, progress=False,
)


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """Root of a tiny synthetic LibriSpeech-layout corpus (see TINY_SYNTH)."""
    root = tmp_path_factory.mktemp("synth_corpus")
    synthesize_corpus(root, TINY_SYNTH)
    return root


@pytest.fixture(scope="session")
def prepared_manifests(synth_corpus, tmp_path_factory) -> dict[str, Path]:
    """Split name → manifest path (`train`, `dev`, `test`, `test-unseen`, `test-engine`) of `synth_corpus`."""
    out = tmp_path_factory.mktemp("manifests")
    summary = prepare_librispeech(synth_corpus, out, oov="g2p", jobs=1, progress=False)
    return {split: out / f"{split}.jsonl" for split in summary["splits"]}
