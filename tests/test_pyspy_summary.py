"""The py-spy summary of `server_load.py --profile`: shares of samples per function."""

from bench_module import load_benchmark


def test_summary_gives_inclusive_and_exclusive_shares_and_drops_frames_on_every_stack(tmp_path):
    summarize = load_benchmark("_pyspy").summarize
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"  # two processes, collapsed stacks "thread;f1;f2 N"
    a.write_text("thread (1): Main;main (x.py:1);step (y.py:2);encoder (z.py:3) 6\n"
                 "thread (1): Main;main (x.py:1);step (y.py:2) 2\n")
    b.write_text("thread (2): Main;main (x.py:1);loop (w.py:9) 2\nnot a sample line\n")
    s = summarize([a, b])
    assert s["samples"] == 10
    inclusive = dict(map(tuple, s["inclusive"]))
    assert inclusive == {"step": 0.8, "encoder": 0.6, "loop": 0.2}  # "main" is on every stack: dropped
    exclusive = dict(map(tuple, s["exclusive"]))
    assert exclusive == {"encoder (z.py:3)": 0.6, "step (y.py:2)": 0.2, "loop (w.py:9)": 0.2}
    assert summarize([]) == {"samples": 0, "rate_hz": 100, "inclusive": [], "exclusive": []}


def test_frames_under_nearly_every_sample_are_dropped_too(tmp_path):
    # The event loop's runner sits under all but a helper thread's odd sample: it says nothing either.
    summarize = load_benchmark("_pyspy").summarize
    f = tmp_path / "a.txt"
    f.write_text("thread (1): Main;run (r.py:1);step (y.py:2) 90\n"
                 "thread (1): Main;run (r.py:1);feed (f.py:3) 6\n"
                 "thread (2): helper;poll (p.py:4) 4\n")
    inclusive = dict(map(tuple, summarize([f])["inclusive"]))
    assert inclusive == {"step": 0.9, "feed": 0.06, "poll": 0.04}  # run: 96 % of samples, dropped
