"""A step run's command line: the step's template with every value shell-quoted."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from cases.models import Case, WorkflowStep
from gpus.models import GPUResource
from mqi_site.config import Config, template_placeholders
from mqi_site.untrusted_text import has_unprintable


def render_command(case: Case, run: WorkflowStep, gpu: GPUResource | None, config: Config) -> str:
    """The command of an execute step run ("" for other steps)."""
    if run.type != "execute":
        return ""
    paths = config.run_paths(case.case_id, case.current_run.number, case.host)
    if has_unprintable(run.beam_name):  # the conductor refuses such plans before this
        raise ValueError(f"beam {run.beam_number}'s name has control characters")
    return fill_template(
        config.remote_commands[run.name],
        {
            "case_id": case.case_id,
            "gpu_id": gpu.index if gpu is not None else "",
            "gpu_uuid": gpu.uuid if gpu is not None else "",
            "case_dir": paths.case_dir,
            "output_dir": paths.output_for(run.beam_number),
            "run_output_dir": paths.output_dir,
            "host": case.host,
            "step": run.name,
            "beam_number": run.beam_number,
            "beam_name": run.beam_name,
        },
    )


def fill_template(template: str, values: Mapping[str, object]) -> str:
    """Fill ``template`` with shell-quoted ``values``.

    Every value is quoted, so a case id such as ``a b; $(rm -rf ~)`` reaches the remote shell
    as one literal argument.  Placeholders were checked against the allowed set when the
    config was loaded; a missing one here is a programming error and raises KeyError.
    """
    quoted = {name: shlex.quote(str(values[name])) for name in template_placeholders(template)}
    return template.format_map(quoted)
