"""A progress pattern cannot freeze a worker: patterns that can backtrack for long are
refused when the configuration is loaded, ``done`` and ``total`` match digits only, and
the executor matches only the end of each line batch, each line cut short, ignoring absurd
counts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mqi_site.config import ConfigError, get_config, parse_config
from tests.conftest import base_config
from workers import executor

KEY = "workflows.default_qa[2].progress_pattern"


def problems_of(pattern: str) -> list[str]:
    raw = base_config(Path("/tmp/mqi-unused"))
    raw["workflows"]["default_qa"][2]["progress_pattern"] = pattern
    try:
        parse_config(yaml.safe_dump(raw))
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"x|(?P<done>\d+) (?P<total>\d+)", "alternation '|' is not supported"),
        (
            r"(?:x\d+)+ (?P<done>\d+) (?P<total>\d+)",
            r"a group may not be repeated (at (?:x\d+)+)",
        ),
        (r"(?:\d)* (?P<done>\d+) (?P<total>\d+)", "a group may not be repeated"),
        (
            r".*(?P<done>\d+).* of .*(?P<total>\d+)",
            r".* is followed by \d+, which can match the same",
        ),
        (r"(?P<done>\d+)\s*(?P<total>\d+)", r"\d+ is followed by \d"),
        (r"\d+ *\d+ (?P<done>\d+)/(?P<total>\d+)", r"\d+ is followed by \d"),
        (r"[0-9a]+a (?P<done>\d+)/(?P<total>\d+)", "[0-9a]+ is followed by 'a'"),
        (r"(?P<done>.+) of (?P<total>\d+)", "the group 'done' must match digits only"),
        (r"(?P<done>\d+) of (?P<total>\w+)", "the group 'total' must match digits only"),
        (r"(?P<done>\d*) of (?P<total>\d+)", "the group 'done' must match digits only"),
        (r"(?P<done>\d+) of (?P<total>\d+)(?=x)", "look-arounds, conditionals, comments"),
        (r"(?i)(?P<done>\d+) of (?P<total>\d+)", "inline flags are not supported"),
        (r"(?P<done>\d+) of (?P<total>\d+) \1", "back-references are not supported"),
    ],
)
def test_a_pattern_that_could_backtrack_for_long_is_refused(pattern, problem):
    problems = problems_of(pattern)

    assert len(problems) == 1 and problems[0].startswith(f"{KEY}: "), problems
    assert problem in problems[0]


@pytest.mark.parametrize(
    "pattern",
    [
        r"Generating particles for \((?P<done>\d+) of (?P<total>\d+) batches\)",
        r"(?P<done>\d+)\s*/\s*(?P<total>\d+)",
        r"^batch (?P<done>[0-9]+)/(?P<total>[0-9]{1,6})$",
        r"\s*(?P<done>\d+)\s+of\s+(?P<total>\d+)",
        r"[^\d]*(?P<done>\d+) of (?P<total>\d++)",
        r"\w+: (?P<done>\d{1,9}) of (?P<total>\d{1,9})\b",
    ],
)
def test_patterns_whose_repetitions_are_separated_are_accepted(pattern):
    assert problems_of(pattern) == []


def moqui_run() -> executor.StepRun:
    config = get_config()
    return executor.StepRun(
        id=1,
        case_id="QA-1",
        step=config.step("default_qa", "run_moqui_sim"),
        span=config.progress_span("default_qa", "run_moqui_sim"),  # 70 to 90
        command="",
        host="local",
        gpu_index=0,
        case_dir="/x",
        output_dir="/y",
        started_at=None,
        heartbeat_at=None,
    )


def batch(done: object, total: object) -> str:
    return f"Generating particles for ({done} of {total} batches)"


def test_the_latest_progress_line_counts():
    assert (
        executor._progress(moqui_run(), [batch(1, 10), batch(5, 10), "other"]) == 50
    )  # the step run's own %


def test_absurd_counts_are_ignored_and_an_earlier_line_counts():
    lines = [batch(5, 10), batch("9" * 13, "9" * 14), batch(3, 0), batch("9" * 5000, 10)]

    assert executor._progress(moqui_run(), lines) == 50  # the step run's own %


def test_only_the_start_of_a_long_line_is_matched():
    padding = "x" * executor.PROGRESS_LINE_CHARS

    assert executor._progress(moqui_run(), [padding + batch(5, 10)]) is None
    assert executor._progress(moqui_run(), [batch(5, 10) + padding]) == 50  # the step run's own %


def test_only_the_last_lines_of_a_chunk_are_matched():
    lines = [batch(5, 10)] + ["noise"] * executor.PROGRESS_LINES

    assert executor._progress(moqui_run(), lines) is None
    assert executor._progress(moqui_run(), lines[:-1]) == 50  # the step run's own %
