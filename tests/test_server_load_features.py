"""The server-load benchmark's feature sets (benchmarks/_server_load_features.py): what a
`--features` spec means, and the specs it refuses. (The load run itself, which starts a server,
is the slow smoke test in test_benchmarks_smoke.py.)"""

from __future__ import annotations

import pytest
from bench_module import load_benchmark

features = load_benchmark("_server_load_features")


def test_feature_sets_are_parsed_plain_first_with_seeded_unrelated_hotwords():
    sets = features.parse_features("diarization+hotwords3,plain", {"THE"}, seed=1)
    assert [f.name for f in sets] == ["plain", "diarization+hotwords3"]  # plain first: the baseline
    assert sets[0].start_fields() == {} and sets[0].stream_options() == {"speaker_turns": None, "hotwords": []}
    assert sets[1].start_fields()["hotwords"][0] == {"phrase": sets[1].hotwords[0], "boost": 2.0}
    options = sets[1].stream_options()  # what the server makes of that start message
    assert options["speaker_turns"] is not None and [p for p, _ in options["hotwords"]] == list(sets[1].hotwords)
    assert features.unrelated_hotwords(3, set(), seed=1) == sets[1].hotwords  # seeded
    excluded = set(features.unrelated_hotwords(50, set(), seed=2))
    assert not excluded & set(features.unrelated_hotwords(50, excluded, seed=2))  # words a test sentence says


@pytest.mark.parametrize("spec, error", [("plain,plain", "twice"), ("plain,speakers", "'speakers'"),
                                         ("plain,hotwords0", "hotwords0"), ("plain,hotwords1001", "hotwords1001"),
                                         ("plain,diarization+diarization", "each once"),
                                         ("diarization,hotwords2", "include 'plain'"),
                                         ("plain,,diarization", "empty")])
def test_bad_feature_specs_are_refused_naming_the_entry(spec, error):
    with pytest.raises(SystemExit, match=error):
        features.parse_features(spec, set())


def test_repeats_alternate_the_order_of_the_sets():
    sets = features.parse_features("plain,diarization", set())
    assert [f.name for f in features.run_order(sets, 0)] == ["plain", "diarization"]
    assert [f.name for f in features.run_order(sets, 1)] == ["diarization", "plain"]
