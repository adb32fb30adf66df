"""Pure decisions about a workflow: which step comes next, what a step's progress spans,
whether it needs a GPU, and how its command is rendered.  Nothing here touches the ORM."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from mqi_site.config import StepSpec, template_placeholders


def first_step(steps: Sequence[StepSpec]) -> StepSpec:
    return steps[0]


def next_step(steps: Sequence[StepSpec], current: str) -> StepSpec | None:
    """The step after ``current`` (the first when ``current`` is empty); None when done."""
    if not current:
        return steps[0]
    names = [spec.name for spec in steps]
    position = names.index(current)  # ValueError: the step is no longer configured
    return steps[position + 1] if position + 1 < len(steps) else None


def step_named(steps: Sequence[StepSpec], name: str) -> StepSpec:
    for spec in steps:
        if spec.name == name:
            return spec
    raise ValueError(name)


def progress_span(steps: Sequence[StepSpec], name: str) -> tuple[int, int]:
    """The case progress a step covers: from its own value to the next step's (or 100)."""
    following = next_step(steps, name)
    return step_named(steps, name).progress, following.progress if following else 100


def needs_gpu(spec: StepSpec, gpu_policy: str) -> bool:
    return gpu_policy == "every_step" or spec.type == "execute"


def remote_case_dir(upload_dir: str, case_id: str) -> str:
    return str(PurePosixPath(upload_dir) / case_id)


def remote_output_dir(download_dir: str, case_id: str) -> str:
    return str(PurePosixPath(download_dir) / case_id)


def render_command(template: str, values: Mapping[str, object]) -> str:
    """Fill ``template`` with shell-quoted ``values``.

    Every value is quoted, so a case id such as ``a b; $(rm -rf ~)`` reaches the remote shell
    as one literal argument.  Placeholders were checked against the allowed set when the
    config was loaded; a missing one here is a programming error and raises KeyError.
    """
    quoted = {name: shlex.quote(str(values[name])) for name in template_placeholders(template)}
    return template.format_map(quoted)
