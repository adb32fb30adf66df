"""``nvidia-smi`` queries: the exact command lines and parsers for their csv output.

Pure functions, no I/O: the caller runs the command (locally or over SSH) and hands the
text here.  Both queries use ``--format=csv,noheader,nounits``, so every line is one record
of comma-separated fields with numbers in MiB, percent and degrees Celsius.

The parsers are tolerant of what the real tool prints on healthy systems and strict about
anything else:

* a field the driver cannot report is ``[N/A]``, ``[Not Supported]``, ``[Unknown Error]``
  and the like; numeric fields become ``None``,
* fields are separated by ``", "`` but extra blanks and ``\\r\\n`` line ends are accepted,
* GPU names contain spaces (``NVIDIA A100-SXM4-80GB``, ``Tesla V100-PCIE-32GB``),
* no output (or ``No running processes found``) means no compute processes, and
  ``No devices were found`` means no GPUs,
* any other line that does not fit raises :class:`ValueError` naming the line, because a
  misread inventory would silently book GPUs that do not exist; so do numbers beyond what
  the hardware reports (and the database stores) and names or uuids too long or holding
  control characters.  :func:`parse_gpu_lines` keeps the lines that fit and names the
  others, so one bad line does not hide the host's other GPUs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GPU_QUERY_FIELDS = (
    "index",
    "uuid",
    "name",
    "memory.used",
    "memory.total",
    "utilization.gpu",
    "temperature.gpu",
)
COMPUTE_APPS_QUERY_FIELDS = ("gpu_uuid", "pid", "used_memory")
CSV_FORMAT = "--format=csv,noheader,nounits"

# Arguments after the executable, one tuple item per argv element.
GPU_QUERY_ARGS = (f"--query-gpu={','.join(GPU_QUERY_FIELDS)}", CSV_FORMAT)
COMPUTE_APPS_QUERY_ARGS = (
    f"--query-compute-apps={','.join(COMPUTE_APPS_QUERY_FIELDS)}",
    CSV_FORMAT,
)
# The same arguments as one shell-safe string (no characters the shell interprets), for
# ``f"{executable} {GPU_QUERY}"``.
GPU_QUERY = " ".join(GPU_QUERY_ARGS)
COMPUTE_APPS_QUERY = " ".join(COMPUTE_APPS_QUERY_ARGS)

# Full command lines with the default executable name.
GPU_COMMAND = f"nvidia-smi {GPU_QUERY}"
COMPUTE_APPS_COMMAND = f"nvidia-smi {COMPUTE_APPS_QUERY}"

# "[N/A]", "[Not Supported]", "[Unknown Error]", "[Insufficient Permissions]", ...; older
# drivers print "N/A" without brackets.
_UNAVAILABLE_RE = re.compile(r"^(\[[A-Za-z][A-Za-z /_-]*\]|N/A)$")
_NO_GPUS = "no devices were found"
_NO_PROCESSES = "no running processes found"
# The largest value each number may have: what the hardware can report, within what the
# GPUResource columns hold (small integers for index and temperature, 32 bits for MiB).
_MAXIMUM = {
    "index": 32767,
    "memory.used": 2**31 - 1,
    "memory.total": 2**31 - 1,
    "utilization.gpu": 100,
    "temperature.gpu": 32767,
    "pid": 2**31 - 1,
    "used_memory": 2**31 - 1,
}
# The longest uuid and name the GPUResource columns hold.
_LONGEST = {"uuid": 64, "gpu_uuid": 64, "name": 128}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class GPUInfo:
    """One line of the GPU query. Readings the driver does not report are ``None``."""

    index: int
    uuid: str
    name: str
    memory_used_mib: int | None
    memory_total_mib: int | None
    utilization_pct: int | None
    temperature_c: int | None


@dataclass(frozen=True)
class ComputeApp:
    """One process using a GPU, as listed by the compute-apps query."""

    gpu_uuid: str
    pid: int
    used_memory_mib: int | None


def parse_gpus(text: str) -> list[GPUInfo]:
    """Parse the output of :data:`GPU_COMMAND`; raise ``ValueError`` on a line that does not fit.

    The name is everything between the uuid and the last four fields, so a name with
    spaces (or even a comma) is kept whole.
    """
    gpus, problems = parse_gpu_lines(text)
    if problems:
        raise ValueError(problems[0])
    return gpus


def parse_gpu_lines(text: str) -> tuple[list[GPUInfo], list[str]]:
    """The GPUs of the lines that fit, and one problem per line that does not.

    A GPU index listed twice still raises ``ValueError``: which line tells the truth?
    """
    gpus: list[GPUInfo] = []
    problems: list[str] = []
    for number, line in _records(text):
        if line.lower() == _NO_GPUS:
            continue
        try:
            gpus.append(_gpu(number, line))
        except ValueError as exc:
            problems.append(str(exc))
    indexes = [gpu.index for gpu in gpus]
    if len(set(indexes)) != len(indexes):
        raise ValueError(f"nvidia-smi output lists a GPU index twice: {sorted(indexes)}")
    return gpus, problems


def _gpu(number: int, line: str) -> GPUInfo:
    # index and uuid from the left, the four numbers from the right: the name between
    head = line.split(",", 2)
    tail = head[-1].rsplit(",", 4) if len(head) == 3 else []
    if len(tail) != 5:  # fewer than 7 fields in all
        raise _bad_line(
            number,
            line,
            f"expected {len(GPU_QUERY_FIELDS)} fields ({', '.join(GPU_QUERY_FIELDS)}), "
            f"got {len(line.split(','))}",
        )
    index, uuid = (field.strip() for field in head[:2])
    name, used, total, utilization, temperature = (field.strip() for field in tail)
    return GPUInfo(
        index=_required_int(index, "index", number, line),
        uuid=_required_text(uuid, "uuid", number, line),
        name=_required_text(name, "name", number, line),
        memory_used_mib=_optional_int(used, "memory.used", number, line),
        memory_total_mib=_optional_int(total, "memory.total", number, line),
        utilization_pct=_optional_int(utilization, "utilization.gpu", number, line),
        temperature_c=_optional_int(temperature, "temperature.gpu", number, line),
    )


def parse_compute_apps(text: str) -> list[ComputeApp]:
    """Parse the output of :data:`COMPUTE_APPS_COMMAND`; empty output means no processes."""
    apps: list[ComputeApp] = []
    for number, line in _records(text):
        if line.lower() == _NO_PROCESSES:
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != len(COMPUTE_APPS_QUERY_FIELDS):
            raise _bad_line(
                number,
                line,
                f"expected {len(COMPUTE_APPS_QUERY_FIELDS)} fields "
                f"({', '.join(COMPUTE_APPS_QUERY_FIELDS)}), got {len(fields)}",
            )
        uuid, pid, used = fields
        apps.append(
            ComputeApp(
                gpu_uuid=_required_text(uuid, "gpu_uuid", number, line),
                pid=_required_int(pid, "pid", number, line),
                used_memory_mib=_optional_int(used, "used_memory", number, line),
            )
        )
    return apps


def _records(text: str) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers, surrounding blanks removed."""
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]


def _bad_line(number: int, line: str, problem: str) -> ValueError:
    shown = line if len(line) <= 200 else f"{line[:200]}..."
    return ValueError(f"unexpected nvidia-smi output on line {number} {shown!r}: {problem}")


def _required_text(value: str, field: str, number: int, line: str) -> str:
    if not value or _UNAVAILABLE_RE.match(value):
        raise _bad_line(number, line, f"{field} is missing ({value or 'empty'})")
    if len(value) > _LONGEST[field] or _CONTROL.search(value):
        raise _bad_line(
            number, line, f"{field} is longer than {_LONGEST[field]} or holds control characters"
        )
    return value


def _required_int(value: str, field: str, number: int, line: str) -> int:
    if not value.isdecimal() or not value.isascii():
        shown = value if len(value) <= 20 else f"{value[:20]}..."
        raise _bad_line(number, line, f"{field} is not a non-negative integer: {shown!r}")
    # the length first: int() refuses more than 4300 digits, and no reading has 11
    if len(value) > 10 or int(value) > _MAXIMUM[field]:
        raise _bad_line(number, line, f"{field} is larger than {_MAXIMUM[field]}")
    return int(value)


def _optional_int(value: str, field: str, number: int, line: str) -> int | None:
    if _UNAVAILABLE_RE.match(value):
        return None
    return _required_int(value, field, number, line)
