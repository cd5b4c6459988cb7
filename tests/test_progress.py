"""Progress on long steps: step counters with an ETA (compare, audit) and session bars (predict,
explain), silent off a terminal and under --quiet."""

import io

import pytest

from trafficlens.progress import Steps, counted, duration, session_bar


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("seconds, text", [(0, "0 s"), (42.4, "42 s"), (59.6, "1 min 00 s"), (185, "3 min 05 s"),
                                           (3720, "1 h 02 min"), (-3, "0 s")])
def test_duration_reads_as_a_person_writes_it(seconds, text):
    assert duration(seconds) == text


def test_steps_say_i_of_n_and_estimate_what_is_left_from_the_finished_steps():
    clock, lines = FakeClock(), []
    steps = Steps(4, lines.append, clock=clock)
    steps.start("rf, seed 0")
    clock.now += 10
    steps.start("nb, seed 0")
    clock.now += 30  # two steps done in 40 s: 20 s each, two left
    steps.start("rf, seed 1")
    clock.now += 20
    steps.start("nb, seed 1")
    clock.now += 5
    steps.finish()
    assert lines == [
        "[1/4] rf, seed 0 (elapsed 0 s)",
        "[2/4] nb, seed 0 (elapsed 10 s, about 30 s left)",
        "[3/4] rf, seed 1 (elapsed 40 s, about 40 s left)",
        "[4/4] nb, seed 1 (elapsed 1 min 00 s, about 20 s left)",
        "[4/4] done in 1 min 05 s",
    ]


def test_a_session_bar_counts_every_item_and_writes_only_where_enabled():
    shown = io.StringIO()
    with session_bar(total=7, desc="predict", enabled=True, file=shown) as bar:
        assert list(counted(iter(range(7)), bar)) == list(range(7))
        assert bar.n == 7
    assert "predict" in shown.getvalue() and "/7 " in shown.getvalue() and "sessions/s" in shown.getvalue()

    piped = io.StringIO()  # not a terminal: auto mode stays silent, so logs get no carriage returns
    with session_bar(total=7, file=piped) as bar:
        list(counted(range(7), bar))
    assert piped.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    with session_bar(desc="explain", file=terminal, unit="groups") as bar:
        list(counted(range(3), bar))
        assert bar.n == 3
    assert "explain" in terminal.getvalue() and "groups/s" in terminal.getvalue()
