import json

import pytest

from mtspeech.data.manifest import ManifestError, Utterance, read_manifest, read_manifests, write_manifest


def _utt(i: int, audio: str = "a.flac") -> Utterance:
    return Utterance(id=f"1-2-{i:04d}", audio=audio, duration=1.5 + i, text="HELLO WORLD",
                     speaker="1", sex="F", phones=["HH", "AH", "L", "OW"], speech=[[0.1, 1.2]])


def test_round_trip_resolves_relative_audio(tmp_path):
    utts = [_utt(0, "audio/a.flac"), _utt(1, "/abs/b.flac"),
            Utterance(id="x", audio="c.flac", duration=2.0)]
    path = tmp_path / "sub" / "m.jsonl"
    write_manifest(path, utts)
    back = read_manifest(path)
    assert back[0].audio == str(path.parent.resolve() / "audio" / "a.flac")
    assert back[1].audio == "/abs/b.flac"
    assert [u.id for u in back] == ["1-2-0000", "1-2-0001", "x"]
    assert back[0].phones == utts[0].phones and back[0].speech == utts[0].speech
    assert back[2].text is None and back[2].phones is None and back[2].speech is None
    # a second round trip is exact (audio now absolute)
    write_manifest(tmp_path / "m2.jsonl", back)
    assert read_manifest(tmp_path / "m2.jsonl") == back


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "audio": "a.flac", "duration": 1.0', "invalid JSON"),
    ('{"id": "a", "duration": 1.0}', "missing required key 'audio'"),
    ('{"id": "a", "audio": "a.flac", "duration": "1.0"}', "'duration'"),
    ('{"id": 3, "audio": "a.flac", "duration": 1.0}', "'id'"),
    ('{"id": "a", "audio": "a.flac", "duration": 1.0, "phones": "AH B"}', "'phones'"),
    ('{"id": "a", "audio": "a.flac", "duration": 1.0, "speech": [[0.1]]}', "'speech'"),
    ('{"id": "a", "audio": "a.flac", "duration": 1.0, "txt": "A"}', "unknown key"),
    ('[1, 2]', "JSON object"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps(_utt(0).to_json())
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert f"{path}:3" in str(err.value) and message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_to_json_writes_every_field_in_declaration_order():
    # to_json is written out by hand for speed; a field added to Utterance must not vanish.
    import dataclasses

    u = Utterance(id="a", audio="a.flac", duration=1.0, text="HI", speaker="s", sex="F",
                  phones=("HH", "AY"), speech=((0.1, 0.9),))
    assert list(u.to_json()) == [f.name for f in dataclasses.fields(Utterance)]
    assert u.to_json()["phones"] == ["HH", "AY"] and u.to_json()["speech"] == [[0.1, 0.9]]


def test_read_manifests_concatenates_in_order_and_refuses_a_repeated_utterance(tmp_path):
    write_manifest(tmp_path / "a.jsonl", [_utt(0), _utt(1)])
    write_manifest(tmp_path / "b" / "b.jsonl", [_utt(2, "x.flac")])
    both = read_manifests([tmp_path / "a.jsonl", str(tmp_path / "b" / "b.jsonl")])
    assert [u.id for u in both] == ["1-2-0000", "1-2-0001", "1-2-0002"]
    assert both[2].audio == str((tmp_path / "b" / "x.flac").resolve())  # each against its own folder
    assert read_manifests(tmp_path / "a.jsonl") == read_manifest(tmp_path / "a.jsonl")  # one path
    write_manifest(tmp_path / "c.jsonl", [_utt(1)])
    with pytest.raises(ManifestError, match=r"c.jsonl: utterance '1-2-0001' is also in .*a.jsonl"):
        read_manifests([tmp_path / "a.jsonl", tmp_path / "c.jsonl"])
