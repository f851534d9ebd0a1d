"""Progress lines and the time-left estimate (vectune.progress), driven by a fake slow phase
in this process: no Ray, a plain counter, the log mode (stderr is not a terminal here)."""

from __future__ import annotations

import logging
import re
import threading
import time

from vectune import progress


def test_rate_ignores_warm_up_and_measures_the_steps_own_pace():
    rate = progress.Rate(total=50)
    rate.update(0.0, 0)
    rate.update(100.0, 1)  # 100 s of start-up, then the first step lands
    assert rate.left(100.0, 1) is None  # one advance says nothing of the pace yet
    rate.update(114.0, 2)  # a step still warming up
    assert rate.left(114.0, 2) is None  # not judged on one step alone
    rate.update(120.0, 3)
    assert rate.per_second(120.0, 3) == 0.1
    assert rate.left(120.0, 3) == 470.0  # 47 steps at 10 s: the start-up is not extrapolated
    # what the old estimate (done / time since the stage began) would have said: 3 / 120 s
    assert (50 - 3) / (3 / 120.0) > 3 * rate.left(120.0, 3)
    assert rate.left(600.0, 50) is None


def test_a_slow_fake_phase_prints_a_line_at_least_every_interval_with_an_honest_time_left(monkeypatch, caplog):
    monkeypatch.setattr(progress, "LOG_EVERY", 0.25)
    monkeypatch.setattr(progress, "POLL_EVERY", 0.02)
    step, steps, warm_up = 0.1, 20, 0.8
    stamps: list[tuple[float, str]] = []

    class Catch(logging.Handler):
        def emit(self, record):
            stamps.append((time.monotonic(), record.getMessage()))

    handler = Catch()
    logger = logging.getLogger("vectune")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        with progress.track("choose mixing weight", steps, unit="weights", local=True) as counter:
            started = time.monotonic()
            time.sleep(warm_up)  # loading two models: nothing done yet
            for _ in range(steps):
                time.sleep(step)
                progress.tick(counter, 1, weight=0.5)
            ended = time.monotonic()
            time.sleep(0.3)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)
    lines = [(t, m) for t, m in stamps if m.startswith("choose mixing weight: ")]
    assert lines and lines[0][1].startswith("choose mixing weight: 0/20 weights, starting")
    assert lines[0][0] - started < 0.15  # the first line at once, not after an interval
    gaps = [b - a for (a, _), (b, _) in zip([(started, "")] + lines, lines)]
    assert max(gaps) < 0.25 + 0.2, gaps  # never silent for much longer than the interval
    timed = [(t, m) for t, m in lines if "left" in m and "estimating" not in m]
    assert timed, [m for _, m in lines]
    t, first = timed[0]
    said = re.search(r"~(?:(\d+)m)?(\d+)s left", first)
    estimate = int(said.group(1) or 0) * 60 + int(said.group(2))
    real = ended - t
    assert real / 2 - 1 <= estimate <= 2 * real + 1, (first, real)  # within 2x (whole seconds shown)
    assert re.search(r"\d+/20 weights \(\d+%\), [\d.]+ weights/s", first) and "weight 0.5" in first


def test_no_work_yields_no_counter():
    with progress.track("nothing", 0) as counter:
        assert counter is None
    progress.tick(None, 3)  # a None counter is ignored


def test_a_phase_that_ends_between_lines_still_logs_where_it_ended(monkeypatch, caplog):
    """A line when the phase begins, and one when it ends with news since the previous line, even
    when it ends long before the next line was due: the log never stops at 0/N."""
    monkeypatch.setattr(progress, "LOG_EVERY", 60.0)
    monkeypatch.setattr(progress, "POLL_EVERY", 0.02)
    with caplog.at_level(logging.INFO, logger="vectune"):
        with progress.track("quick", 5, unit="steps", local=True) as counter:
            for _ in range(5):
                progress.tick(counter, 1, loss=0.5)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("quick: ")]
    assert len(lines) == 2, lines
    assert lines[0].startswith("quick: 0/5 steps, starting")
    assert lines[1].startswith("quick: 5/5 steps (100%)") and "loss 0.5" in lines[1]
