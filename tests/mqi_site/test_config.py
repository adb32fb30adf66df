"""config.yaml validation: one test per kind of error, each naming the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError

from conductor.checks import check_config
from mqi_site.config import ConfigError, get_config, load_config, parse_config
from tests.conftest import REPO_DIR, base_config


def problems_of(tmp_path: Path, edit) -> list[str]:
    raw = base_config(tmp_path)
    edit(raw)
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(raw), source="test.yaml")
    return caught.value.problems


def test_shipped_config_is_valid():
    config = load_config(REPO_DIR / "config.yaml")

    assert [s.name for s in config.workflows["default_qa"]] == [
        "upload_case_files",
        "run_interpreter",
        "run_moqui_sim",
        "download_results",
        "evaluate_dose",
    ]
    assert config.evaluation.criteria == [(3.0, 2.0), (2.0, 2.0)]
    assert (config.evaluation.low_dose_cutoff_pct, config.evaluation.pass_rate_pct) == (10, 95)


def test_gamma_criteria_and_thresholds_out_of_range_are_named(tmp_path):
    problems = problems_of(
        tmp_path,
        lambda raw: raw.update(
            evaluation={
                "criteria": [[3, 2], [0, 2], [3]],
                "normalisation": "local",
                "low_dose_cutoff_pct": 100,
                "pass_rate_pct": 0,
            }
        ),
    )

    assert problems == [
        "evaluation.criteria[1][0]: Input should be greater than 0",
        "evaluation.criteria[2][1]: required key is missing",
        "evaluation.normalisation: Input should be 'global'",
        "evaluation.low_dose_cutoff_pct: Input should be less than 100",
        "evaluation.pass_rate_pct: Input should be greater than 0",
    ]


def test_no_gamma_criterion_at_all_is_refused(tmp_path):
    problems = problems_of(tmp_path, lambda raw: raw.update(evaluation={"criteria": []}))

    assert problems == [
        "evaluation.criteria: List should have at least 1 item after validation, not 0"
    ]


def test_unknown_key_is_named(tmp_path):
    problems = problems_of(tmp_path, lambda raw: raw["conductor"].update(monitr_interval=5))

    assert problems == ["conductor.monitr_interval: unknown key"]


def test_unknown_top_level_section_is_named(tmp_path):
    problems = problems_of(tmp_path, lambda raw: raw.update(workflow={}))

    assert problems == ["workflow: unknown key"]


def test_unknown_step_type_is_named(tmp_path):
    problems = problems_of(
        tmp_path, lambda raw: raw["workflows"]["default_qa"][0].update(type="uplod")
    )

    assert problems == [
        "workflows.default_qa[0].type: unknown step type 'uplod' "
        "(known: download, evaluate, execute, upload)"
    ]


def test_execute_step_without_a_template_is_named(tmp_path):
    problems = problems_of(tmp_path, lambda raw: raw["remote_commands"].pop("run_moqui_sim"))

    assert problems == [
        "remote_commands.run_moqui_sim: execute step 'run_moqui_sim' of workflow 'default_qa' "
        "has no command template"
    ]


def test_template_with_an_unknown_placeholder_is_named(tmp_path):
    problems = problems_of(
        tmp_path,
        lambda raw: raw["remote_commands"].update(
            run_interpreter="interp --case {case} --gpu {gpu_id}"
        ),
    )

    assert len(problems) == 1
    assert problems[0].startswith("remote_commands.run_interpreter: unknown placeholder {case}")


def test_template_with_attribute_access_is_refused(tmp_path):
    problems = problems_of(
        tmp_path,
        lambda raw: raw["remote_commands"].update(run_interpreter="x {case_id.__class__}"),
    )

    assert problems[0].startswith("remote_commands.run_interpreter: unknown placeholder")


def test_template_with_a_conversion_is_refused(tmp_path):
    problems = problems_of(
        tmp_path, lambda raw: raw["remote_commands"].update(run_interpreter="x {case_id!r}")
    )

    assert problems == [
        "remote_commands.run_interpreter: placeholder {case_id} may not use a format spec or "
        "conversion"
    ]


def test_progress_not_increasing_is_named(tmp_path):
    problems = problems_of(
        tmp_path, lambda raw: raw["workflows"]["default_qa"][2].update(progress=30)
    )

    assert problems == [
        "workflows.default_qa[2].progress: 30 must be greater than the previous step's 30"
    ]


@pytest.mark.parametrize("value", [-1, 101])
def test_progress_outside_0_100_is_named(tmp_path, value):
    problems = problems_of(
        tmp_path, lambda raw: raw["workflows"]["default_qa"][3].update(progress=value)
    )

    assert problems == [f"workflows.default_qa[3].progress: {value} is outside 0-100"]


def test_workflow_with_no_steps_is_named(tmp_path):
    problems = problems_of(tmp_path, lambda raw: raw["workflows"].update(empty_flow=[]))

    assert problems == [
        "workflows.empty_flow: List should have at least 1 item after validation, not 0"
    ]


def test_missing_section_is_named(tmp_path):
    problems = problems_of(tmp_path, lambda raw: raw.pop("hosts"))

    assert problems == ["hosts: required key is missing"]


def test_ssh_host_without_credentials_is_named(tmp_path):
    problems = problems_of(
        tmp_path, lambda raw: raw["hosts"].update(gpu1={"transport": "ssh", "hostname": "10.0.0.5"})
    )

    assert problems == [
        "hosts.gpu1.username: required for the ssh transport",
        "hosts.gpu1.key_file: required for the ssh transport",
        "hosts.gpu1.known_hosts_file: required for the ssh transport",
    ]


def test_bad_progress_pattern_is_named(tmp_path):
    problems = problems_of(
        tmp_path,
        lambda raw: raw["workflows"]["default_qa"][2].update(progress_pattern=r"batch (\d+)"),
    )

    assert problems == [
        "workflows.default_qa[2].progress_pattern: needs named groups (?P<done>...) and "
        "(?P<total>...)"
    ]


def test_every_problem_is_reported_at_once(tmp_path):
    def edit(raw):
        raw["workflows"]["default_qa"][0]["type"] = "teleport"
        raw["remote_commands"]["run_interpreter"] = "x {nope}"
        raw["scanner"]["colour"] = "blue"

    problems = problems_of(tmp_path, edit)

    # Structural problems are reported first; cross-section ones once the structure is sound.
    assert problems == ["scanner.colour: unknown key"]


def test_not_yaml_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"not valid YAML"):
        parse_config("workflows: [unclosed", source="x.yaml")


def test_system_check_reports_each_problem(use_config):
    use_config(lambda raw: raw["workflows"]["default_qa"][1].update(type="nope"))

    errors = check_config()

    assert [e.id for e in errors] == ["mqi.E001"]
    assert errors[0].msg.startswith("workflows.default_qa[1].type: unknown step type 'nope'")


def test_check_config_command_passes_on_the_shipped_config(capsys):
    call_command("check_config", "--config", str(REPO_DIR / "config.yaml"))

    assert "OK (1 workflow(s), 5 step(s), 1 host(s))" in capsys.readouterr().out


def test_check_config_command_fails_with_the_problems(tmp_path, capsys):
    raw = base_config(tmp_path)
    raw["workflows"]["default_qa"][0]["progress"] = 150
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))

    with pytest.raises(CommandError, match="1 problem"):
        call_command("check_config", "--config", str(path))

    assert "workflows.default_qa[0].progress: 150 is outside 0-100" in capsys.readouterr().err


def test_each_host_may_have_its_own_folders(use_config):
    def two_hosts(raw: dict) -> None:
        raw["hosts"]["node2"] = {
            "transport": "local",
            "upload_dir": "/srv/node2/in",
            "download_dir": "/srv/node2/out",
            "gpu_discovery": "static",
            "static_gpus": [{"index": 0}],
        }

    use_config(two_hosts)
    config = get_config()

    assert config.run_paths("QA-1", 2, "node2").case_dir == "/srv/node2/in/QA-1/run-2"
    assert config.run_paths("QA-1", 2, "node2").output_dir == "/srv/node2/out/QA-1/run-2"
    shared = config.conductor.remote_paths
    assert config.run_paths("QA-1", 2, "local").case_dir == f"{shared.upload_dir}/QA-1/run-2"


def test_a_host_without_folders_of_its_own_needs_the_shared_ones():
    text = """
conductor: {}
workflows: {qa: [{name: up, type: upload, progress: 10}]}
hosts: {gpu1: {transport: local, upload_dir: /srv/in}}
scanner: {watch_dir: /in, workflow: qa}
results: {local_dir: /results}
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text)

    assert raised.value.problems == [
        "hosts.gpu1.download_dir: required (or set conductor.remote_paths.download_dir for "
        "every host)"
    ]
