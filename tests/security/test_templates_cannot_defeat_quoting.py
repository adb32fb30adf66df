"""A command template cannot undo the quoting of its values: a placeholder inside quotes, a
substitution, a comment, a here-document, glued to shell syntax, or given to a command that
reads its arguments as shell code again is a configuration error naming the key; and no
template the configuration accepts lets a case id run code, whatever the shell."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cases.models import Case
from conductor.render import fill_template as render_command
from mqi_site.config import ConfigError, clear_config_cache, parse_config
from tests.badinput.conftest import injected_files, make_site, run_mqi
from tests.conftest import REPO_DIR, base_config

STEP = "run_interpreter"
# (template, the placeholder named, what the problem says about it)
REFUSED = [
    ('prog --case "{case_id}"', "case_id", "is inside double quotes"),
    ("prog --case '{case_id}'", "case_id", "is inside single quotes"),
    ('prog --out="{output_dir}"', "output_dir", "is inside double quotes"),
    ('prog a"{case_id}"b', "case_id", "is inside double quotes"),
    ('prog "$HOME/x {case_id} y"', "case_id", "is inside double quotes"),
    ("bash -c 'cd {case_dir} && prog'", "case_dir", "is inside single quotes"),
    ("prog $(basename {case_dir})", "case_dir", "is inside a command or process substitution"),
    ("prog `basename {case_dir}`", "case_dir", "is inside a `...` command substitution"),
    ('prog "$(basename {case_dir})"', "case_dir", "is inside double quotes"),
    ("prog ${{HOME:-{case_dir}}}", "case_dir", "is inside a ${...} parameter expansion"),
    ("prog ${case_id}", "case_id", "is joined to shell syntax in the word '${case_id}'"),
    ("prog $[{gpu_id} + 1]", "gpu_id", "is inside an arithmetic expansion"),
    ("(( {gpu_id} > 0 )) && prog", "gpu_id", "is inside an arithmetic expression"),
    ("prog < <(cat {case_dir}/x)", "case_dir", "is inside a command or process substitution"),
    ("cat <<EOF\n{case_id}\nEOF", "case_id", "comes after a here-document (<<)"),
    ("prog $'a\\' {case_id} '", "case_id", "is inside $'...' quotes"),
    ("prog $'a' {case_id}", "case_id", "comes after $'...', which sh and bash quote differently"),
    ("prog \\{case_id}", "case_id", "follows a backslash"),
    ("prog # for {case_id}", "case_id", "is inside a comment"),
    ("prog ~{case_id}", "case_id", "is joined to shell syntax in the word '~{case_id}'"),
    ("prog {case_dir}/*.dcm", "case_dir", "is joined to shell syntax in the word"),
    ("prog {{a,{case_id}}}", "case_id", "is joined to shell syntax in the word"),
    ("{case_id}=1 prog", "case_id", "is followed by '='"),
    ("eval prog {case_id}", "case_id", "runs 'eval', which can read its arguments as shell"),
    ("sh -c {case_id}", "case_id", "runs 'sh'"),
    ("/bin/bash -lc prog {case_id}", "case_id", "runs 'bash'"),
    ('"bash" -c "prog $0" {case_id}', "case_id", "runs 'bash'"),
    ("ssh gpu2 prog {case_id}", "case_id", "runs 'ssh'"),
    ("echo {case_id} | xargs prog", "case_id", "runs 'xargs'"),
    ("[[ {gpu_id} -eq 0 ]] && prog", "gpu_id", "runs '[['"),
    ("export CASE={case_id}; prog", "case_id", "runs 'export'"),
    ("read {case_id} < /dev/null; prog", "case_id", "runs 'read'"),
    ("[ -v {case_id} ] || prog", "case_id", "runs '['"),
    ("X={case_id}; prog $((X))", "case_id", "is in a template that evaluates arithmetic"),
    ("X={case_id}; prog ${{!X}}", "case_id", "is in a template that uses ${!...}"),
    ("prog >&{output_dir}/log", "output_dir", "is in the target of a >& or <& redirection"),
    ("prog 2>&1{case_id}", "case_id", "is in the target of a >& or <& redirection"),
]
ACCEPTED = [
    "prog --case {case_id} --gpu {gpu_id}",
    "prog --case={case_id} --out={output_dir}/dose.dcm",
    "cd {case_dir} && prog {case_id} > {output_dir}/log.txt 2>&1",
    "( cd {case_dir}; prog {case_id} ) | tee {output_dir}/log",
    "MQI_CASE={case_id} CUDA_DEVICE={gpu_uuid} prog {step}@{host}",
    "prog \"$HOME/bin\" 'a literal # text' {case_id} # a comment without placeholders",
    "prog $(echo ')') {case_id} <<< {case_dir} 2>&1 >{output_dir}/log",
    "[ -d {case_dir} ] && prog",
]


def config_with(template: str) -> str:
    raw = base_config(Path("/tmp/mqi-unused"))
    raw["remote_commands"][STEP] = template
    return yaml.safe_dump(raw, sort_keys=False)


def problems_of(template: str) -> list[str]:
    try:
        parse_config(config_with(template))
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(("template", "name", "reason"), REFUSED, ids=[t for t, *_ in REFUSED])
def test_a_placeholder_that_could_lose_its_quoting_is_a_config_error(template, name, reason):
    problems = problems_of(template)

    expected = f"remote_commands.{STEP}: placeholder {{{name}}} "
    assert any(p.startswith(expected) and reason in p for p in problems), problems


@pytest.mark.parametrize("template", ACCEPTED)
def test_whole_unquoted_words_are_accepted(template):
    assert problems_of(template) == []


def test_the_shipped_templates_are_accepted():
    shipped = yaml.safe_load((REPO_DIR / "config.yaml").read_text())["remote_commands"]

    for template in shipped.values():
        assert problems_of(template) == []


def test_an_unbalanced_quote_is_a_config_error():
    assert f"remote_commands.{STEP}: the template ends before '\"' is closed (no '\"')" in (
        problems_of('prog --case {case_id} "--gpu')
    )


# --- no accepted template lets a case id run code ------------------------------------------

HOSTILE_IDS = [
    "q-$(touch PWNED)",
    "q-`touch PWNED`",
    "q';touch PWNED;'",
    'q"$(touch PWNED)"',
    "q\ntouch PWNED\n#",
    "q\\",
    "q-${IFS}$(touch${IFS}PWNED)",
    "a[$(touch PWNED)]",
    "PATH",
]
# Ways to write a placeholder into a template, safe and unsafe ({p}: the placeholder).
SAFE_SHAPES = ["{p}", "--out={p}", "{p}/x.log", "X={p} true", "> {p}.out", "<<< {p} cat"]
UNSAFE_SHAPES = [
    *('"{p}"', "'{p}'", 'a"{p}"b', "$({p})", "$(echo {p})", "`echo {p}`", '"$(echo {p})"'),
    *("${{X:-{p}}}", "${p}", "\\{p}", "# {p}\n", "~{p}", "{p}*", "{p}=1 true", "$'x' {p}"),
    *("eval echo {p}", "sh -c {p}", "bash -c 'echo {p}'", "echo {p} | sh", "[[ {p} == x ]]"),
    *("echo {p} | xargs echo", "cat <<EOF\n{p}\nEOF\n", "(( {p} ))", "export Y={p}"),
]
JOINS = ["; ", " && ", " | cat; ", " ", "\n"]
# Loose pieces of shell text, for every other kind of quoting mistake.
FRAGMENTS = [
    *(" ", " ", " ", "\n", ";", "&&", "|", "(", ")", "<", ">", "<<", "2>&1"),
    *("'", "'", '"', '"', "\\", "$", "$(", "`", "${{", "}}", "{{", "#", "=", "~", "*"),
    *("$'", "((", "))", "[[", "]]", "--out=", "x", "x/", ",", "0", "-eq", "EOF"),
    *("echo", "printf '%s\\n'", "eval", "sh -c", "bash -c", "true", "cat", "export X="),
]
PLACEHOLDERS = ["{case_id}", "{case_dir}", "{gpu_id}"]
SHELLS = [shell for shell in ("/bin/sh", shutil.which("bash")) if shell]


def random_templates(count: int, seed: int) -> list[str]:
    """Half put together from shapes, half from loose fragments."""
    rng = random.Random(seed)
    templates = []
    for number in range(count):
        if number % 2:
            pieces = rng.choices(FRAGMENTS, k=rng.randint(1, 8)) + rng.choices(PLACEHOLDERS, k=2)
            rng.shuffle(pieces)
            templates.append("".join(pieces))
        else:
            shapes = [
                rng.choice(SAFE_SHAPES if rng.random() < 0.6 else UNSAFE_SHAPES).replace(
                    "{p}", rng.choice(PLACEHOLDERS)
                )
                for _ in range(rng.randint(1, 3))
            ]
            templates.append("echo " + "".join(s + rng.choice(JOINS) for s in shapes))
    return templates


def runs_injected_code(template: str, case_id: str, cwd: Path) -> bool:
    """Render ``template`` for ``case_id`` and run it: did it create ``PWNED``?"""
    command = render_command(
        template, {"case_id": case_id, "case_dir": f"{cwd}/up/{case_id}", "gpu_id": 0}
    )
    for shell in SHELLS:
        subprocess.run(
            [shell, "-c", command],
            cwd=cwd,
            env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=20,
            check=False,
        )
        if (cwd / "PWNED").exists():
            return True
    return False


@pytest.mark.parametrize("seed", [1, 2])
def test_no_accepted_template_lets_a_case_id_run_code(seed, tmp_path):
    accepted, refused_that_inject = 0, 0
    for number, template in enumerate(random_templates(150, seed)):
        cwd = tmp_path / str(number)
        cwd.mkdir()
        if problems_of(template):
            # The refused ones show the corpus has teeth: some would run the injected code.
            refused_that_inject += any(runs_injected_code(template, i, cwd) for i in HOSTILE_IDS)
            continue
        accepted += 1
        for case_id in HOSTILE_IDS:
            assert not runs_injected_code(template, case_id, cwd), (template, case_id)

    assert accepted >= 30 and refused_that_inject >= 10, (accepted, refused_that_inject)


@pytest.mark.django_db(transaction=True)
def test_a_hostile_folder_name_runs_nothing_through_the_whole_system(tmp_path, settings):
    """The stand-ins run with every value glued into ``--flag=value`` words, the form the
    check allows besides whole words, for a folder whose name is a command substitution."""
    site = make_site(tmp_path / "site", gpus=1)
    raw = yaml.safe_load(site.config_path.read_text())
    for step, command in raw["remote_commands"].items():
        raw["remote_commands"][step] = command.replace(" {", "={")  # --case={case_id}
    assert "--output-dir={output_dir}" in raw["remote_commands"]["run_moqui_sim"]
    site.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    settings.MQI_CONFIG = site.config_path
    clear_config_cache()
    name = "q-$(touch INJECTED_1)"
    site.sample(name)

    run = run_mqi("--once")

    assert run.code == 0, run.log_text
    assert Case.objects.get(case_id=name).status == Case.Status.COMPLETED
    assert site.starts(name, "moquisim") == 1
    assert injected_files(site.root, REPO_DIR) == []
    clear_config_cache()
