"""Progress lines with an ETA, for logs and pipes where a live bar shows nothing."""

from __future__ import annotations

from fairloop.progress import ProgressLines, clock_text


def test_lines_at_start_each_step_end_and_on_a_timer_with_an_eta():
    now = [0.0]
    seen: list[str] = []
    lines = ProgressLines(seen.append, steps=4, every_seconds=30, clock=lambda: now[0])
    for done in range(101):
        now[0] = done * 2.0     # 2 s per item
        lines("generate", done, 100)
    assert seen[0] == "generate: 0/100 (0 %), 0:00 elapsed, eta ?"
    assert "generate: 25/100 (25 %), 0:50 elapsed, eta 2:30" in seen
    assert seen[-1] == "generate: 100/100 (100 %), 3:20 elapsed, eta 0:00"
    # 30 s apart between quarters: 0, 15 (30 s), 25, 40, 50, 65, 75, 90, 100
    assert [int(s.split(":")[1].split("/")[0]) for s in seen] == [0, 15, 25, 40, 50, 65, 75, 90, 100]
    lines("generate", 100, 100)
    assert len(seen) == 9            # the end is shown once
    lines("generate", 0, 10)         # the next iteration's stage starts again
    assert seen[-1].startswith("generate: 0/10 (0 %)")


def test_clock_text():
    assert clock_text(3) == "0:03" and clock_text(247) == "4:07" and clock_text(3909) == "1:05:09"
