"""Bad configuration files: every one stops ``check_config``, ``check`` and ``runmqi`` at
start-up with the offending key named, before anything is scanned, run or written.

The table below is the corpus: one row per kind of bad configuration and the problem line it
must produce.  A ``!!python`` tag that would run a command is one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError

from cases.models import Case
from tests.badinput.conftest import injected_files, listing
from tests.conftest import REPO_DIR, base_config


def edited(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], str]:
    def text(root: Path) -> str:
        raw = base_config(root)
        edit(raw)
        return yaml.safe_dump(raw, sort_keys=False)

    return text


def literal(text: str) -> Callable[[Path], str]:
    return lambda root: text


def command(step: str, template: str) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["remote_commands"].update({step: template})


def step(position: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["workflows"]["default_qa"][position].update(changes)


def ssh_host(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda raw: raw["hosts"].update(gpu1={"transport": "ssh", **fields})


@dataclass(frozen=True)
class BadConfig:
    what: str
    text: Callable[[Path], str]
    problem: str  # the line check_config prints (after "<path>: "), or its start


CORPUS = [
    BadConfig(
        "an unknown key",
        edited(lambda raw: raw["scanner"].update(colour="blue")),
        "scanner.colour: unknown key",
    ),
    BadConfig(
        "an unknown section",
        edited(lambda raw: raw.update(workflow={})),
        "workflow: unknown key",
    ),
    BadConfig(
        "an unknown placeholder",
        edited(command("run_interpreter", "interp --case {case} --gpu {gpu_id}")),
        "remote_commands.run_interpreter: unknown placeholder {case} (allowed: {beam_name}, ",
    ),
    BadConfig(
        "attribute access in a placeholder",
        edited(command("run_interpreter", "interp {case_id.__class__}")),
        "remote_commands.run_interpreter: unknown placeholder {case_id.__class__}",
    ),
    BadConfig(
        "item access in a placeholder",
        edited(command("run_interpreter", "interp {case_id[0]}")),
        "remote_commands.run_interpreter: unknown placeholder {case_id[0]}",
    ),
    BadConfig(
        "a conversion in a placeholder",
        edited(command("run_interpreter", "interp {case_id!r}")),
        "remote_commands.run_interpreter: placeholder {case_id} may not use a format spec or "
        "conversion",
    ),
    BadConfig(
        "a format spec in a placeholder",
        edited(command("run_moqui_sim", "sim --gpu {gpu_id:>8}")),
        "remote_commands.run_moqui_sim: placeholder {gpu_id} may not use a format spec or "
        "conversion",
    ),
    BadConfig(
        "a positional placeholder",
        edited(command("run_interpreter", "interp {}")),
        "remote_commands.run_interpreter: unknown placeholder {}",
    ),
    BadConfig(
        "an unbalanced brace",
        edited(command("run_interpreter", "interp --case {case_id")),
        "remote_commands.run_interpreter: expected '}' before end of string",
    ),
    BadConfig(
        "an execute step without a template",
        edited(lambda raw: raw["remote_commands"].pop("run_moqui_sim")),
        "remote_commands.run_moqui_sim: execute step 'run_moqui_sim' of workflow 'default_qa' "
        "has no command template",
    ),
    BadConfig(
        "an unknown step type",
        edited(step(0, type="uplod")),
        "workflows.default_qa[0].type: unknown step type 'uplod' (known: download, evaluate, "
        "execute, upload)",
    ),
    BadConfig(
        "a step name that is not an identifier",
        edited(step(1, name="run interpreter; rm")),
        "workflows.default_qa[1].name: step names are lower-case identifiers (a-z, 0-9, _)",
    ),
    BadConfig(
        "no hosts section",
        edited(lambda raw: raw.pop("hosts")),
        "hosts: required key is missing",
    ),
    BadConfig(
        "an empty hosts section",
        edited(lambda raw: raw.update(hosts={})),
        "hosts: at least one host is required",
    ),
    BadConfig(
        "an ssh host without a key file",
        edited(ssh_host(username="mqi", known_hosts_file="/etc/mqi/known_hosts")),
        "hosts.gpu1.key_file: required for the ssh transport",
    ),
    BadConfig(
        "an ssh host without known_hosts",
        edited(ssh_host(username="mqi", key_file="/etc/mqi/id_ed25519")),
        "hosts.gpu1.known_hosts_file: required for the ssh transport",
    ),
    BadConfig(
        "a port that is not a number",
        edited(ssh_host(username="m", key_file="/k", known_hosts_file="/h", port="ssh")),
        "hosts.gpu1.port: Input should be a valid integer, unable to parse string as an integer",
    ),
    BadConfig(
        "a progress regex that does not compile",
        edited(step(2, progress_pattern=r"batch (?P<done>\d+ of (?P<total>\d+)")),
        "workflows.default_qa[2].progress_pattern: not a valid regular expression: "
        "missing ), unterminated subpattern",
    ),
    BadConfig(
        "a progress regex without its groups",
        edited(step(2, progress_pattern=r"batch (\d+) of (\d+)")),
        "workflows.default_qa[2].progress_pattern: needs named groups (?P<done>...) and "
        "(?P<total>...)",
    ),
    BadConfig(
        "a progress regex that can backtrack catastrophically",
        edited(step(2, progress_pattern=r"(a+)+$ (?P<done>\d+) (?P<total>\d+)")),
        "workflows.default_qa[2].progress_pattern: a group may not be repeated (at (a+)+)",
    ),
    BadConfig(
        "a progress count that is not digits",
        edited(step(2, progress_pattern=r"(?P<done>.+) of (?P<total>\d+)")),
        "workflows.default_qa[2].progress_pattern: the group 'done' must match digits only",
    ),
    BadConfig(
        "a placeholder inside quotes",
        edited(command("run_interpreter", 'interp --case "{case_id}"')),
        "remote_commands.run_interpreter: placeholder {case_id} is inside double quotes; a "
        "placeholder must be a whole, unquoted shell word",
    ),
    BadConfig(
        "a scanner workflow that does not exist",
        edited(lambda raw: raw["scanner"].update(workflow="default_q")),
        "scanner.workflow: no workflow named 'default_q'",
    ),
    BadConfig(
        "not YAML",
        literal("conductor: {remote_paths: [unclosed\nworkflows: x\n"),
        "(file): not valid YAML: ",
    ),
    BadConfig(
        "a YAML list",
        literal("- conductor\n- workflows\n"),
        "(top level): must be a mapping of sections",
    ),
    BadConfig(
        "an empty file",
        literal(""),
        "(top level): must be a mapping of sections",
    ),
    BadConfig(
        "a YAML tag that would run a command",
        literal("conductor: !!python/object/apply:os.system ['touch INJECTED_7']\n"),
        "(file): not valid YAML: could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system'",
    ),
]


@pytest.fixture
def bad_config(request, tmp_path, settings) -> tuple[BadConfig, Path]:
    bad: BadConfig = request.param
    path = tmp_path / "config.yaml"
    path.write_text(bad.text(tmp_path))
    settings.MQI_CONFIG = path
    return bad, path


every_bad_config = pytest.mark.parametrize(
    "bad_config", CORPUS, ids=[bad.what for bad in CORPUS], indirect=True
)


@every_bad_config
def test_check_config_names_the_key_and_exits_1(bad_config, capsys):
    bad, path = bad_config

    with pytest.raises(CommandError, match=r"problem\(s\) in ") as refused:
        call_command("check_config", "--config", str(path))

    assert refused.value.returncode == 1
    assert f"{path}: {bad.problem}" in capsys.readouterr().err


@every_bad_config
def test_the_system_check_refuses_to_start_with_the_key(bad_config):
    bad, _ = bad_config

    with pytest.raises(SystemCheckError) as refused:
        call_command("check", stdout=StringIO(), stderr=StringIO())

    assert bad.problem in str(refused.value)
    assert "(mqi.E001)" in str(refused.value)


@pytest.mark.django_db
@every_bad_config
def test_runmqi_refuses_to_start_and_touches_nothing(bad_config, tmp_path):
    bad, _ = bad_config
    before = listing(tmp_path)

    with pytest.raises(CommandError) as refused:
        call_command("runmqi", "--once", stdout=StringIO(), stderr=StringIO())

    assert bad.problem in str(refused.value)
    assert listing(tmp_path) == before
    assert not Case.objects.exists()
    assert injected_files(tmp_path, REPO_DIR) == []


def test_a_missing_config_file_is_named(tmp_path, settings, capsys):
    path = tmp_path / "nowhere" / "config.yaml"
    settings.MQI_CONFIG = path

    with pytest.raises(CommandError):
        call_command("check_config")
    with pytest.raises(CommandError) as runmqi:
        call_command("runmqi", "--once")

    problem = "(file): cannot read: No such file or directory"
    assert f"{path}: {problem}" in capsys.readouterr().err
    assert problem in str(runmqi.value)
