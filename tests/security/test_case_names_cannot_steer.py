"""A case name cannot steer a command or a path: every value in a command template reaches
the shell as one literal argument, and a case id that is not a single folder name never
becomes a path (the conductor fails such a case before any step, and the path helpers
refuse it)."""

from __future__ import annotations

import shlex
import subprocess

import pytest

from cases.models import Case
from conductor.actors import conductor
from conductor.render import fill_template
from mqi_site.config import get_config
from mqi_site.messaging import QUEUES, Command, ErrorKind
from tests.badinput.conftest import injected_files
from tests.conductor.helpers import active_run, make_gpus, register, succeed
from tests.conftest import REPO_DIR, drain

HOSTILE = [
    "a\nb",
    "x; touch INJECTED_8",
    "$(touch INJECTED_8)",
    "`touch INJECTED_8`",
    "' ; touch INJECTED_8 ; '",
    '" ; touch INJECTED_8 ; "',
    "a b\tc  d",
    "--case=evil",
    "-rf",
    "* ? [a-z] ~root ${IFS} $HOME",
    "back\\slash \\'",
    "é 日本 🙂",
]
NOT_A_FOLDER_NAME = ["../../etc", "..", ".", "", "a/b", "/etc", "x\x00y"]


def interpreter_argv(case_id: str, upload_dir: str, download_dir: str) -> list[str]:
    return [
        "python",
        "$MQI_PROJECT_DIR/hpc_standins/interpreter.py",
        "--case",
        case_id,
        "--gpu",
        "0",
        "--case-dir",
        f"{upload_dir}/{case_id}/run-1",
        "--output-dir",
        f"{download_dir}/{case_id}/run-1",
    ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case_id", HOSTILE, ids=repr)
def test_the_conductor_renders_a_hostile_name_as_one_argument_inside_the_roots(
    stub_broker, case_id
):
    make_gpus(1)
    case = register(case_id)
    succeed(active_run(case))  # the upload

    run = active_run(case)
    paths = get_config().conductor.remote_paths

    assert run.name == "run_interpreter"
    assert shlex.split(run.command) == interpreter_argv(
        case_id, paths.upload_dir, paths.download_dir
    )


@pytest.mark.parametrize("case_id", HOSTILE, ids=repr)
def test_a_rendered_command_gives_the_shell_exactly_the_name(case_id, tmp_path):
    rendered = fill_template(
        "printf '%s\\0' {case_id} {case_dir} {step}",
        {
            "case_id": case_id,
            "case_dir": get_config().run_paths(case_id, 1, "local").case_dir,
            "step": "s",
        },
    )

    done = subprocess.run(
        ["/bin/sh", "-c", rendered], cwd=tmp_path, capture_output=True, check=True
    )

    upload_dir = get_config().conductor.remote_paths.upload_dir
    assert done.stdout.decode().split("\0")[:-1] == [
        case_id,
        f"{upload_dir}/{case_id}/run-1",
        "s",
    ]
    assert injected_files(tmp_path, REPO_DIR) == []


@pytest.mark.parametrize("case_id", NOT_A_FOLDER_NAME, ids=repr)
def test_a_case_id_that_is_not_a_folder_name_never_becomes_a_path(case_id):
    config = get_config()

    with pytest.raises(ValueError, match="cannot be used as a folder name"):
        config.run_paths(case_id, 1, "local")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("case_id", ["../../etc", "..", "a/b"], ids=repr)
def test_a_forged_new_case_with_a_path_for_a_name_fails_before_any_step(
    stub_broker, tmp_path, case_id
):
    make_gpus(1)

    conductor.fn(
        Command.NEW_CASE_FOUND,
        {"case_id": case_id, "source_path": str(tmp_path / "incoming" / "x"), "problems": []},
    )

    case = Case.objects.get(case_id=case_id)
    assert case.status == Case.Status.FAILED
    assert case.error_kind == ErrorKind.INVALID_INPUT
    assert case.error_message == (
        f"invalid case folder: the case id {case_id!r} cannot be used as a folder name"
    )
    assert not case.steps.exists()
    assert drain(stub_broker, QUEUES["file_transfer"]) == []
    assert not (tmp_path / "etc").exists()
