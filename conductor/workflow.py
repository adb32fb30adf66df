"""Pure decisions about a workflow: which step comes next, whether it needs a GPU, and how
its command is rendered.  Nothing here touches the ORM."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

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


def needs_gpu(spec: StepSpec, gpu_policy: str) -> bool:
    return gpu_policy == "every_step" or spec.type == "execute"


def render_command(template: str, values: Mapping[str, object]) -> str:
    """Fill ``template`` with shell-quoted ``values``.

    Every value is quoted, so a case id such as ``a b; $(rm -rf ~)`` reaches the remote shell
    as one literal argument.  Placeholders were checked against the allowed set when the
    config was loaded; a missing one here is a programming error and raises KeyError.
    """
    quoted = {name: shlex.quote(str(values[name])) for name in template_placeholders(template)}
    return template.format_map(quoted)
