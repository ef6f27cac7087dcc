"""The word LM a checkpoint carries, and `--lm auto`.

`mtspeech embed-lm CKPT [--lm ARPA|auto]` stores a word LM inside a checkpoint. With the LM
inside, `--lm auto` (`mtspeech evaluate`, `serve`, `transcribe --model`) needs nothing but
the checkpoint: no training manifest on disk. `auto` here builds the trigram of the training
transcripts named in the checkpoint's config (`training_transcripts_lm`), exactly as `--lm
auto` does when no LM is embedded. The checkpoint is rewritten atomically (temp file + rename).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from mtspeech.decoding.config import DecodingConfig, DecodingError

log = logging.getLogger(__name__)

LM_KEY = "lm_arpa"  # checkpoint entry: the ARPA text of a word n-gram LM


def embedded_lm(checkpoint: str | Path, out_dir: str | Path) -> Path | None:
    """Write the checkpoint's embedded LM to `out_dir/lm.arpa` and return that path (None: none)."""
    from mtspeech.checkpoint import load_state

    text = load_state(checkpoint).get(LM_KEY)
    if not text:
        return None
    path = Path(out_dir) / "lm.arpa"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def has_embedded_lm(checkpoint: str | Path) -> bool:
    """Whether `mtspeech embed-lm` stored a word LM in the checkpoint."""
    from mtspeech.checkpoint import load_state

    return bool(load_state(checkpoint).get(LM_KEY))


def embed_lm(checkpoint: str | Path, lm: str | Path = "auto", order: int = DecodingConfig.lm_order) -> int:
    """Store the ARPA LM `lm` (or `auto`: the training-transcript n-gram) in `checkpoint`;
    returns the number of bytes embedded."""
    from mtspeech.checkpoint import load_state, save_atomic
    from mtspeech.experiment import experiment_from_dict

    checkpoint = Path(checkpoint)
    state = load_state(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        if lm == "auto":
            state.pop(LM_KEY, None)  # build afresh from the transcripts, not from a stale copy
            lm = training_transcripts_lm(experiment_from_dict(state["config"]), Path(tmp), order, checkpoint,
                                         use_embedded=False)
        raw = Path(lm).read_bytes()
    if b"\\data\\" not in raw[:1000]:
        raise ValueError(f"{lm}: not an ARPA file (no \\data\\ header); embed-lm stores ARPA text only")
    text = raw.decode("utf-8")
    state[LM_KEY] = text
    save_atomic(state, checkpoint)
    log.info("embedded a %d-byte word LM in %s", len(text), checkpoint)
    return len(text)


def training_transcripts_lm(exp, out_dir: Path, order: int = DecodingConfig.lm_order, checkpoint: Path | None = None,
                            use_embedded: bool = True) -> Path:
    """The `--lm auto` LM (ARPA): the one embedded in the checkpoint (`mtspeech embed-lm`) if
    any, else a word n-gram built from the training transcripts named in its config.

    `exp.data.train` is resolved against the working directory first, then the checkpoint's
    folder. Raises DecodingError naming the manifest when it is missing or holds no text.
    """
    from mtspeech.data.manifest import read_manifest
    from mtspeech.decoding.lm import build_ngram_lm

    checkpoint = None if checkpoint is None else Path(checkpoint)
    if use_embedded and checkpoint is not None:
        embedded = embedded_lm(checkpoint, out_dir)
        if embedded is not None:
            log.info("--lm auto: using the word LM embedded in %s", checkpoint)
            return embedded

    manifests = [exp.data.train] if isinstance(exp.data.train, str) else list(exp.data.train)
    texts = []
    for name in manifests:
        candidates = [Path(name)]
        if checkpoint is not None and not Path(name).is_absolute():
            candidates.append(checkpoint.parent / name)
        train = next((p for p in candidates if p.is_file()), None)
        if train is None:
            raise DecodingError(f"--lm auto: the training manifest {name} named in the checkpoint's config "
                                "was not found; run from the training working directory or pass --lm ARPA")
        texts += [u.text for u in read_manifest(train) if u.text]
    if not texts:
        raise DecodingError(f"--lm auto: {', '.join(manifests)} hold no transcripts")
    return build_ngram_lm(texts, order=order, out_path=Path(out_dir) / "lm.arpa")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint to store the LM in (rewritten in place)")
    parser.add_argument("--lm", default="auto", help="ARPA file, or 'auto' (trigram of the training transcripts)")
    parser.add_argument("--order", type=int, default=DecodingConfig.lm_order, help="n-gram order for --lm auto")


def main(args: argparse.Namespace) -> int:
    size = embed_lm(args.checkpoint, args.lm, args.order)
    print(f"embedded a {size:,}-byte word LM in {args.checkpoint}; --lm auto now needs nothing else")
    return 0
