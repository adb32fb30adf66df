"""config.yaml: ``fan_out: beams`` and the beam placeholders."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from conductor.render import fill_template
from mqi_site.config import parse_config
from tests.conftest import base_config
from tests.mqi_site.test_config import problems_of

pytestmark = pytest.mark.pure

BEAM_COMMAND = (
    "moquisim --beam {beam_number} --beam-name {beam_name} --input-dir {run_output_dir} "
    "--output-dir {output_dir}"
)


def fan_out_simulation(raw: dict) -> None:
    raw["workflows"]["default_qa"][2]["fan_out"] = "beams"
    raw["remote_commands"]["run_moqui_sim"] = BEAM_COMMAND


def test_an_execute_step_fans_out_over_beams_with_beam_placeholders(tmp_path):
    raw = base_config(tmp_path)
    fan_out_simulation(raw)

    config = parse_config(yaml.safe_dump(raw), source="test.yaml")

    assert config.step("default_qa", "run_moqui_sim").fan_out == "beams"
    assert config.step("default_qa", "run_interpreter").fan_out is None


def test_only_execute_steps_fan_out(tmp_path):
    problems = problems_of(
        tmp_path, lambda raw: raw["workflows"]["default_qa"][0].update(fan_out="beams")
    )

    assert problems == [
        "workflows.default_qa[0].fan_out: only execute steps can fan out over beams, "
        "not 'upload' steps"
    ]


def test_fan_out_over_anything_but_beams_is_refused(tmp_path):
    problems = problems_of(
        tmp_path, lambda raw: raw["workflows"]["default_qa"][2].update(fan_out="gpus")
    )

    assert problems == ["workflows.default_qa[2].fan_out: Input should be 'beams'"]


def test_beam_placeholders_need_a_step_that_fans_out(tmp_path):
    problems = problems_of(
        tmp_path, lambda raw: raw["remote_commands"].update(run_moqui_sim=BEAM_COMMAND)
    )

    assert problems == [
        "remote_commands.run_moqui_sim: {beam_name} needs a step with fan_out: beams",
        "remote_commands.run_moqui_sim: {beam_number} needs a step with fan_out: beams",
    ]


def test_a_beam_placeholder_inside_quotes_is_refused_like_any_other(tmp_path):
    def quoted(raw: dict) -> None:
        fan_out_simulation(raw)
        raw["remote_commands"]["run_moqui_sim"] = "moquisim --name '{beam_name}'"

    problems = problems_of(tmp_path, quoted)

    assert len(problems) == 1
    assert problems[0].startswith(
        "remote_commands.run_moqui_sim: placeholder {beam_name} is inside single quotes"
    )


def test_a_beam_name_reaches_the_shell_as_one_literal_word():
    command = fill_template("sim --name {beam_name}", {"beam_name": "B2 $(rm -rf ~); `x`"})

    assert command == "sim --name 'B2 $(rm -rf ~); `x`'"


def test_a_hostile_beam_name_is_one_literal_argument_in_a_real_shell(tmp_path):
    name = "B2 $(touch pwned) `touch pwned2`; touch pwned3 'x\""
    command = fill_template("printf %s {beam_name}", {"beam_name": name})

    shell = tmp_path / "shell"
    shell.mkdir()
    done = subprocess.run(
        ["bash", "-c", command], cwd=shell, capture_output=True, text=True, check=True
    )

    assert done.stdout == name
    assert list(shell.iterdir()) == []
