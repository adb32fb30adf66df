"""``config.yaml``: schema, validation and loading.

The file is read with ``yaml.safe_load`` and validated once; every problem is reported with
the dotted key it concerns (``workflows.default_qa[1].type: unknown step type 'uplod'``) so an
operator can fix it without reading code.  Structure is checked by pydantic (unknown keys,
types, ranges); the rules that span sections (templates per execute step, placeholders,
increasing progress) are checked afterwards in :func:`_cross_section_problems`.

Relative paths in the file are taken relative to the file's own directory.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mqi_site.messaging import STEP_ROUTES
from mqi_site.progress_pattern import progress_pattern_problems
from mqi_site.template_quoting import placeholder_quoting_problems

# Values a remote command template may use; each is shell-quoted when rendered.
TEMPLATE_PLACEHOLDERS = frozenset(
    {
        *("case_id", "gpu_id", "gpu_uuid", "case_dir", "output_dir", "run_output_dir"),
        *("host", "step", "beam_number", "beam_name"),
    }
)
# Only the command of a step that fans out over the plan's beams has a beam.
BEAM_PLACEHOLDERS = frozenset({"beam_number", "beam_name"})
STEP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Far beyond any real configuration, and small enough that refusing a hostile file is quick.
MAX_CONFIG_CHARS = 1_000_000
MAX_CONFIG_NODES = 100_000
MAX_CONFIG_DEPTH = 20


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` lists one ``key: reason`` per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listed = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"invalid configuration {source}:\n{listed}")


class _Section(BaseModel):
    # allow_inf_nan: YAML's .inf and .nan are floats; no duration or interval here means them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _absolute_posix(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError("must be an absolute path without '..'")
    return str(path)


class RemotePaths(_Section):
    upload_dir: str
    download_dir: str

    _absolute = field_validator("upload_dir", "download_dir")(_absolute_posix)


def _absolute_posix_or_none(value: str | None) -> str | None:
    return None if value is None else _absolute_posix(value)


class ConductorSection(_Section):
    # Superseded by the periodic triggers (scanner/reconcile intervals); accepted so the
    # component guide's files load unchanged.
    monitor_interval_sec: float = Field(60, gt=0)
    # Every host's folders, unless the host names its own (hosts.<name>.upload_dir ...).
    remote_paths: RemotePaths | None = None
    # every_step: a case holds its GPU from upload to download (the component guide's rule).
    # execute_steps: a GPU is held only while execute steps run; uploads and downloads of one
    # case overlap with another case's simulation on the same GPU.
    gpu_policy: Literal["every_step", "execute_steps"] = "every_step"
    reconcile_interval_sec: float = Field(30, gt=0, le=3600)
    # How long a step run may go without word from its worker (dispatch, heartbeat, poll)
    # before the reconciler re-sends its command.
    dispatch_grace_sec: float = Field(120, gt=0, le=86400)
    # How often GPU servers known to be down are tried again.
    host_probe_interval_sec: float = Field(10, gt=0, le=3600)


class StepSpec(_Section):
    name: str
    type: str
    progress: int
    # Longest the step may run; execute steps are killed (process group) past it.
    timeout_sec: float = Field(6 * 3600, gt=0)
    # Regex with named groups ``done`` and ``total`` matched against stdout lines; one that
    # could backtrack for long on a hostile line is refused (mqi_site/progress_pattern.py).
    progress_pattern: str | None = None
    # Attempts in total for transient failures (network, SSH, broker).
    max_attempts: int = Field(3, ge=1, le=20)
    # "beams": one step run per treatment beam of the case's plan, each on a GPU of its
    # own (execute steps only; see conductor.machine).
    fan_out: Literal["beams"] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not STEP_NAME_RE.match(value):
            raise ValueError("step names are lower-case identifiers (a-z, 0-9, _)")
        return value

    @field_validator("progress_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if not {"done", "total"} <= set(compiled.groupindex):
            raise ValueError("needs named groups (?P<done>...) and (?P<total>...)")
        problems = progress_pattern_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value


class StaticGPU(_Section):
    index: int = Field(ge=0)
    uuid: str = ""
    name: str = "GPU"
    memory_total_mib: int = Field(0, ge=0)


class HostSpec(_Section):
    transport: Literal["ssh", "local"]
    # This server's own folders, when they differ from conductor.remote_paths.
    upload_dir: str | None = None
    download_dir: str | None = None
    # An outage up to this long is waited out; longer, the cases waiting for it fail.
    max_outage_sec: float = Field(4 * 3600, gt=0, le=30 * 86400)

    _absolute = field_validator("upload_dir", "download_dir")(_absolute_posix_or_none)
    hostname: str = "127.0.0.1"
    port: int = Field(22, ge=1, le=65535)
    username: str = ""
    # Private key and known_hosts are files on the worker machine (mount secrets there);
    # nothing secret is written into config.yaml itself.
    key_file: str = ""
    known_hosts_file: str = ""
    connect_timeout_sec: float = Field(10, gt=0)
    keepalive_sec: int = Field(15, ge=0)
    gpu_discovery: Literal["nvidia-smi", "static"] = "nvidia-smi"
    nvidia_smi: str = "nvidia-smi"
    static_gpus: list[StaticGPU] = []


class ScannerSection(_Section):
    watch_dir: str
    workflow: str = "default_qa"
    # A folder is complete once this file exists in it; "" runs without a marker, and then
    # (only then) a folder is complete once nothing in it changed for quiet_period_sec.
    ready_marker: str = "READY"
    quiet_period_sec: float = Field(60, ge=0)
    # Match the delivery logs' patient and beam numbers against the RTPLAN; off only for
    # a site whose logs carry no identity (PlanInfo.txt or header lines).
    check_log_identity: bool = True
    # An RTPLAN larger than this is refused unread (plans are a few MB; a bigger file is a
    # wrong export or a hostile one).
    max_plan_mb: float = Field(64, gt=0, le=4096)
    scan_interval_sec: float = Field(10, gt=0)
    rtplan_globs: list[str] = ["*.dcm"]
    log_patterns: list[str] = []
    use_file_events: bool = True


class ResultsSection(_Section):
    local_dir: str


class GPUSection(_Section):
    discovery_interval_sec: float = Field(60, gt=0)


class RetrySection(_Section):
    # At most a day: a back-off is a delay on the broker, and a case waits it out.
    backoff_base_sec: float = Field(2, gt=0, le=86400)
    backoff_max_sec: float = Field(300, gt=0, le=86400)


class NotificationSection(_Section):
    # Addresses mailed when a case fails (and, with on_complete, when one completes).
    email_to: list[str] = []
    on_complete: bool = False
    # Where the admin is reachable, for the link in the mail.
    admin_base_url: str = "http://localhost:8000"


class EvaluationSection(_Section):
    """The gamma analysis of ``evaluate`` steps: MOQUI's dose against the planning system's."""

    # (dose %, distance mm) pairs; the verdict needs every one to reach pass_rate_pct
    criteria: Annotated[
        list[tuple[Annotated[float, Field(gt=0, le=100)], Annotated[float, Field(gt=0, le=50)]]],
        Field(min_length=1),
    ] = [(3.0, 2.0), (2.0, 2.0)]
    # global: the dose difference and the cut-off are percentages of the reference's maximum
    # (local normalisation is not offered: pymedphys's local gamma needs other cut-offs)
    normalisation: Literal["global"] = "global"
    low_dose_cutoff_pct: float = Field(10, ge=0, lt=100)
    pass_rate_pct: float = Field(95, gt=0, le=100)
    # where the planning system's RT Dose is looked for among the case folder's files
    tps_dose_globs: list[str] = ["*.dcm"]
    # the search stops once gamma is known to exceed this; above 1, pass rates are exact
    max_gamma: float = Field(2, gt=1, le=10)


class Config(_Section):
    conductor: ConductorSection
    workflows: dict[str, Annotated[list[StepSpec], Field(min_length=1)]]
    remote_commands: dict[str, str] = {}
    hosts: dict[str, HostSpec]
    scanner: ScannerSection
    results: ResultsSection
    gpus: GPUSection = GPUSection()
    retries: RetrySection = RetrySection()
    notifications: NotificationSection = NotificationSection()
    evaluation: EvaluationSection = EvaluationSection()
    source: str = ""

    def step(self, workflow: str, name: str) -> StepSpec:
        for spec in self.workflows[workflow]:
            if spec.name == name:
                return spec
        raise KeyError(f"workflow {workflow!r} has no step {name!r}")

    @property
    def default_host(self) -> str:
        return next(iter(self.hosts))

    def progress_span(self, workflow: str, name: str) -> tuple[int, int]:
        """The case progress a step covers: from its own value to the next step's (or 100)."""
        steps = self.workflows[workflow]
        names = [spec.name for spec in steps]
        position = names.index(name)
        end = steps[position + 1].progress if position + 1 < len(steps) else 100
        return steps[position].progress, end

    def run_paths(self, case_id: str, run_number: int, host: str) -> RunPaths:
        """Where run ``run_number`` of a case lives on ``host`` and here: each run has folders
        of its own, so nothing of an earlier run (files, a straggling process) reaches a
        later one."""
        run = f"run-{int(run_number)}"
        segment = _segment(case_id)
        upload_dir, download_dir = self.remote_dirs(host)
        return RunPaths(
            case_dir=str(PurePosixPath(upload_dir) / segment / run),
            output_dir=str(PurePosixPath(download_dir) / segment / run),
            results_dir=Path(self.results.local_dir) / segment / run,
        )

    def remote_dirs(self, host: str) -> tuple[str, str]:
        """``(upload_dir, download_dir)`` on ``host``: its own, else conductor.remote_paths."""
        spec = self.hosts.get(host)
        shared = self.conductor.remote_paths
        upload = (spec and spec.upload_dir) or (shared and shared.upload_dir)
        download = (spec and spec.download_dir) or (shared and shared.download_dir)
        if not upload or not download:
            raise KeyError(f"host {host!r} has no upload_dir/download_dir in {self.source}")
        return upload, download


@dataclass(frozen=True)
class RunPaths:
    case_dir: str  # on the GPU server: the upload target, the commands' working directory
    output_dir: str  # on the GPU server: where the commands write, the download source
    results_dir: Path  # on this machine: where the results are downloaded

    def output_for(self, beam_number: int) -> str:
        """Where a step run writes: a beam of a step that fans out in a folder of its own
        (``beam-<n>``, downloaded with the rest), so beams never write over each other."""
        if not beam_number:
            return self.output_dir
        return str(PurePosixPath(self.output_dir) / f"beam-{int(beam_number)}")


def case_id_path_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a folder under the configured roots, or None.

    Case ids are folder names, so the scanner never makes such an id; this keeps every path
    built from one inside its root whatever reaches the conductor.
    """
    if case_id in ("", ".", "..") or "/" in case_id or "\x00" in case_id:
        return f"the case id {case_id!r} cannot be used as a folder name"
    return None


def _segment(case_id: str) -> str:
    problem = case_id_path_problem(case_id)
    if problem:
        raise ValueError(problem)
    return case_id


def _format_location(loc: tuple[Any, ...]) -> str:
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key or "(top level)"


def _pydantic_problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        key = _format_location(item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        elif item["type"] == "missing":
            problems.append(f"{key}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {message}")
    return problems


def template_placeholders(template: str) -> list[str]:
    """Field names used by a ``str.format`` template, raising ValueError on bad syntax."""
    names = []
    for _literal, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{field}}} may not use a format spec or conversion")
        names.append(field)
    return names


def _cross_section_problems(config: Config) -> list[str]:
    problems: list[str] = []
    for workflow, steps in config.workflows.items():
        previous = -1
        seen: set[str] = set()
        for position, spec in enumerate(steps):
            key = f"workflows.{workflow}[{position}]"
            if spec.type not in STEP_ROUTES:
                known = ", ".join(sorted(STEP_ROUTES))
                problems.append(f"{key}.type: unknown step type {spec.type!r} (known: {known})")
            if spec.name in seen:
                problems.append(f"{key}.name: step {spec.name!r} appears twice")
            seen.add(spec.name)
            if not 0 <= spec.progress <= 100:
                # An out-of-range value says nothing about the order of the others.
                problems.append(f"{key}.progress: {spec.progress} is outside 0-100")
            elif spec.progress <= previous:
                problems.append(
                    f"{key}.progress: {spec.progress} must be greater than the previous "
                    f"step's {previous}"
                )
            else:
                previous = spec.progress
            if spec.fan_out and spec.type != "execute":
                problems.append(
                    f"{key}.fan_out: only execute steps can fan out over beams, not "
                    f"{spec.type!r} steps"
                )
            if spec.type == "execute" and spec.name not in config.remote_commands:
                problems.append(
                    f"remote_commands.{spec.name}: execute step {spec.name!r} of workflow "
                    f"{workflow!r} has no command template"
                )
    for name, template in config.remote_commands.items():
        try:
            unknown = set(template_placeholders(template)) - TEMPLATE_PLACEHOLDERS
        except ValueError as exc:
            problems.append(f"remote_commands.{name}: {exc}")
            continue
        for placeholder in sorted(unknown):
            allowed = ", ".join(f"{{{p}}}" for p in sorted(TEMPLATE_PLACEHOLDERS))
            problems.append(
                f"remote_commands.{name}: unknown placeholder {{{placeholder}}} "
                f"(allowed: {allowed})"
            )
        problems += _beam_placeholder_problems(config, name, template)
        problems += [
            f"remote_commands.{name}: {problem}"
            for problem in placeholder_quoting_problems(template)
        ]
    if config.scanner.workflow not in config.workflows:
        problems.append(f"scanner.workflow: no workflow named {config.scanner.workflow!r}")
    if not config.hosts:
        problems.append("hosts: at least one host is required")
    for name, host in config.hosts.items():
        if host.transport == "ssh":
            for field in ("username", "key_file", "known_hosts_file"):
                if not getattr(host, field):
                    problems.append(f"hosts.{name}.{field}: required for the ssh transport")
        if host.gpu_discovery == "static" and not host.static_gpus:
            problems.append(f"hosts.{name}.static_gpus: static discovery needs a GPU list")
        shared = config.conductor.remote_paths
        for field in ("upload_dir", "download_dir"):
            if not getattr(host, field) and shared is None:
                problems.append(
                    f"hosts.{name}.{field}: required (or set conductor.remote_paths.{field} "
                    "for every host)"
                )
    return problems


def _beam_placeholder_problems(config: Config, name: str, template: str) -> list[str]:
    """``{beam_number}`` and ``{beam_name}`` only mean something in a step that fans out."""
    used = sorted(BEAM_PLACEHOLDERS & set(template_placeholders(template)))
    fans_out = any(
        spec.name == name and spec.fan_out for steps in config.workflows.values() for spec in steps
    )
    return [
        f"remote_commands.{name}: {{{placeholder}}} needs a step with fan_out: beams"
        for placeholder in used
        if not fans_out
    ]


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make the local paths in ``raw`` absolute, relative to the config file's directory."""

    def resolve(section: dict[str, Any] | None, key: str) -> None:
        if isinstance(section, dict) and isinstance(section.get(key), str) and section[key]:
            # normpath, not resolve(): remote paths must not follow this machine's symlinks.
            section[key] = os.path.normpath(base / Path(section[key]).expanduser())

    resolve(raw.get("scanner"), "watch_dir")
    resolve(raw.get("results"), "local_dir")
    for host in (raw.get("hosts") or {}).values():
        for key in ("key_file", "known_hosts_file", "upload_dir", "download_dir"):
            resolve(host, key)
    # Relative remote paths only make sense for the local transport (a site that runs on
    # the GPU server itself, and the embedded default): they are taken from the config's
    # directory like every other local path.
    conductor = raw.get("conductor")
    if isinstance(conductor, dict):
        resolve(conductor.get("remote_paths"), "upload_dir")
        resolve(conductor.get("remote_paths"), "download_dir")


def parse_config(text: str, *, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """Validate configuration text; raise :class:`ConfigError` listing every problem."""
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(source, [f"(file): longer than {MAX_CONFIG_CHARS} characters"])
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"(file): not valid YAML: {exc}"]) from None
    except RecursionError:
        # PyYAML composes nested collections recursively: [[[[...]]]] a few hundred deep
        raise ConfigError(source, ["(file): nested too deeply"]) from None
    if not isinstance(raw, dict):
        raise ConfigError(source, ["(top level): must be a mapping of sections"])
    problem = _size_problem(raw)
    if problem:
        raise ConfigError(source, [problem])
    _resolve_paths(raw, base_dir or Path.cwd())
    try:
        config = Config.model_validate({**raw, "source": source})
    except ValidationError as exc:
        raise ConfigError(source, _pydantic_problems(exc)) from None
    problems = _cross_section_problems(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def _size_problem(raw: dict[str, Any]) -> str | None:
    """Why the loaded YAML is too big to validate, or None.

    YAML aliases let a small file name one collection many times over (a "billion laughs"
    file loads in no time, as shared objects); everything after loading walks it expanded.
    Counting the expanded nodes, up to a limit, costs at most that limit.
    """
    budget = MAX_CONFIG_NODES
    pending: list[tuple[Any, int]] = [(raw, 1)]
    while pending:
        value, depth = pending.pop()
        budget -= 1
        if budget < 0:
            return f"(file): more than {MAX_CONFIG_NODES} values (expanded YAML aliases count)"
        if depth > MAX_CONFIG_DEPTH:
            return f"(file): nested more than {MAX_CONFIG_DEPTH} levels deep"
        if isinstance(value, dict):
            pending.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list):
            pending.extend((child, depth + 1) for child in value)
    return None


def load_config(path: Path) -> Config:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), [f"(file): cannot read: {exc.strerror}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"(file): not UTF-8 text: byte {exc.start} cannot be decoded ({exc.reason})"
        raise ConfigError(str(path), [problem]) from None
    return parse_config(text, source=str(path), base_dir=path.parent)


@cache
def _cached_config(path: str) -> Config:
    return load_config(Path(path))


def get_config() -> Config:
    """The configuration named by ``settings.MQI_CONFIG``, loaded once per process."""
    from django.conf import settings

    return _cached_config(str(settings.MQI_CONFIG))


def clear_config_cache() -> None:
    _cached_config.cache_clear()
