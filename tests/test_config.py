"""Config loading: base chains, null deletes, overrides, unknown keys and wrong types."""

from dataclasses import dataclass, field

import pytest

from mtspeech.config import ConfigError, apply_overrides, from_dict, load_yaml, merge, to_dict


@dataclass(frozen=True)
class Inner:
    size: int = 4
    rate: float = 0.5
    name: str | None = None


@dataclass(frozen=True)
class Outer:
    path: str
    inner: Inner = field(default_factory=Inner)
    factors: tuple[float, ...] = (0.9, 1.0)
    flag: bool = False


def test_from_dict_builds_nested_typed_config():
    cfg = from_dict(Outer, {"path": "x", "inner": {"size": 8, "rate": 1}, "factors": [1.1]})
    assert cfg == Outer("x", Inner(8, 1.0), (1.1,))
    assert isinstance(cfg.inner.rate, float)
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"path": "x", "inner": {"sise": 3}}, "inner.sise"),
        ({"path": "x", "inner": {"size": "big"}}, "inner.size"),
        ({"path": "x", "inner": {"size": True}}, "inner.size"),
        ({"path": "x", "flag": "yes"}, "flag"),
        ({"inner": {}}, "path"),
        ({"path": "x", "factors": 3}, "factors"),
    ],
)
def test_from_dict_names_the_bad_key(data, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        from_dict(Outer, data)


def test_merge_and_null_delete():
    base = {"tasks": {"asr": {"kind": "ctc"}, "speaker": {"kind": "speaker", "weight": 0.3}}, "lr": 1}
    out = merge(base, {"tasks": {"speaker": None, "vad": {"kind": "vad"}}, "lr": 2})
    assert out == {"tasks": {"asr": {"kind": "ctc"}, "vad": {"kind": "vad"}}, "lr": 2}
    assert "speaker" in base["tasks"]  # inputs untouched


def test_overrides_parse_yaml_values():
    out = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "train.epochs=2", "tasks.vad=null"])
    assert from_dict(Inner, {"rate": out["optim"]["lr"]}).rate == 3e-4
    assert out == {"optim": {"lr": "3e-4"}, "train": {"epochs": 2}, "tasks": {}}
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["no-equals-sign"])


def test_yaml_base_chain(tmp_path):
    (tmp_path / "base.yaml").write_text("a: 1\nb: {c: 2, d: 3}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nb: {d: null, e: 4}\n")
    assert load_yaml(tmp_path / "child.yaml") == {"a": 1, "b": {"c": 2, "e": 4}}
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_data_train_takes_one_manifest_or_a_list():
    from mtspeech.experiment import DataConfig

    assert from_dict(DataConfig, {"train": "a.jsonl"}).train == "a.jsonl"
    assert from_dict(DataConfig, {"train": ["a.jsonl", "b.jsonl"]}).train == ("a.jsonl", "b.jsonl")
    with pytest.raises(ConfigError, match="data.train|train"):
        from_dict(DataConfig, {"train": 3})
