"""Who and what a case folder is about: the plan's identity, and whether the logs belong to it.

The RTPLAN names the patient, the plan and its treatment beams.  The delivery logs name
the patient and the beam they were recorded for, in one of two ways a folder carries:

* ``PlanInfo.txt`` as the delivery system exports it beside each beam's logs: lines
  ``KEY,VALUE``, among them ``DICOM_PATIENT_ID,<id>`` and ``DICOM_BEAM_NUMBER,<n>``.  It
  speaks for every log in its folder and below (the nearest one wins);
* the ``# key: value`` header lines that the project's plain-text logs start with
  (``# patient_id: QA0001``, ``# beam_number: 1``); a log's own header wins over a
  ``PlanInfo.txt``.

:func:`log_problems` turns every disagreement into one sentence naming both values.  The
folder walk and the DICOM reading are the scanner's (:mod:`cases.folder`); this module
only reads the small text files and compares.
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pydicom

PLAN_INFO_NAME = "planinfo.txt"  # matched case-insensitively
# Identity lines sit at the top of a file: reading more would only cost time on big logs.
HEADER_BYTES = 16 * 1024
# Beam kinds that deliver dose; SETUP beams and port films do not and get no log.
TREATMENT_DELIVERY_TYPES = frozenset({"", "TREATMENT", "CONTINUATION"})


@dataclass(frozen=True)
class Beam:
    number: int
    name: str


@dataclass(frozen=True)
class PlanIdentity:
    """What the RTPLAN says about itself; stored on the case and shown with every result."""

    patient_id: str = ""
    patient_name: str = ""
    plan_label: str = ""
    plan_date: dt.date | None = None
    treatment_machine: str = ""
    beams: tuple[Beam, ...] = ()

    def as_payload(self) -> dict:
        """A JSON-able form for messages (dates as ISO text)."""
        data = asdict(self)
        data["plan_date"] = self.plan_date.isoformat() if self.plan_date else None
        data["beams"] = [asdict(beam) for beam in self.beams]
        return data

    @classmethod
    def from_payload(cls, data: dict | None) -> PlanIdentity:
        if not data:
            return cls()
        date = data.get("plan_date")
        return cls(
            patient_id=str(data.get("patient_id") or ""),
            patient_name=str(data.get("patient_name") or ""),
            plan_label=str(data.get("plan_label") or ""),
            plan_date=dt.date.fromisoformat(date) if date else None,
            treatment_machine=str(data.get("treatment_machine") or ""),
            beams=tuple(Beam(int(b["number"]), str(b.get("name") or "")) for b in data["beams"]),
        )


def plan_identity(plan: pydicom.Dataset) -> PlanIdentity:
    """The identity of an RTPLAN already read (only small elements are touched)."""
    beams = []
    machines: list[str] = []
    for item in plan.get("IonBeamSequence") or plan.get("BeamSequence") or []:
        kind = _text(item.get("TreatmentDeliveryType")).upper()
        if kind not in TREATMENT_DELIVERY_TYPES or "BeamNumber" not in item:
            continue
        number = _int(item.get("BeamNumber"))
        if number is None:
            continue
        beams.append(Beam(number, _text(item.get("BeamName"))))
        machine = _text(item.get("TreatmentMachineName"))
        if machine and machine not in machines:
            machines.append(machine)
    return PlanIdentity(
        patient_id=_text(plan.get("PatientID")),
        patient_name=_text(plan.get("PatientName")),
        plan_label=_text(plan.get("RTPlanLabel")),
        plan_date=_date(plan.get("RTPlanDate")),
        treatment_machine=", ".join(machines),
        beams=tuple(beams),
    )


@dataclass
class LogIdentity:
    """Who a log (or a PlanInfo.txt) says it is for; ``source`` is what said it."""

    source: str
    patient_id: str | None = None
    beam_number: int | None = None
    beam_text: str | None = None  # the beam number as written, when it is not a number

    @property
    def known(self) -> bool:
        return self.patient_id is not None or self.beam_number is not None


def read_plan_info(text: str, source: str) -> LogIdentity:
    """``PlanInfo.txt``: ``KEY,VALUE`` lines; only the identity keys matter here."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, comma, value = line.partition(",")
        if comma:
            values.setdefault(key.strip().upper(), value.strip())
    return _identity(source, values.get("DICOM_PATIENT_ID"), values.get("DICOM_BEAM_NUMBER"))


def read_log_header(head: bytes, source: str) -> LogIdentity:
    """The ``# key: value`` lines a plain-text log starts with (none in a binary log)."""
    values: dict[str, str] = {}
    for raw in head.split(b"\n"):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith(b"#"):
            break
        key, colon, value = line[1:].decode("utf-8", "replace").partition(":")
        if colon:
            values.setdefault(key.strip().lower(), value.strip())
    return _identity(source, values.get("patient_id"), values.get("beam_number"))


def log_problems(
    plan: PlanIdentity,
    plan_name: str,
    logs: Sequence[str],
    plan_infos: Sequence[str],
    read_head: Callable[[str], bytes],
) -> list[str]:
    """Every way the logs fail to belong to the plan, one sentence each.

    ``logs`` and ``plan_infos`` are paths relative to the case folder ('/'-separated);
    ``read_head(rel)`` returns the first bytes of a file.
    """
    infos = {
        posixpath.dirname(rel): read_plan_info(_decode(read_head(rel)), rel) for rel in plan_infos
    }
    treatment = {beam.number: beam for beam in plan.beams}
    listed = ", ".join(str(number) for number in sorted(treatment)) or "none"
    problems: list[str] = []
    logged: set[int] = set()
    for identity in infos.values():
        problems += _mismatches(identity, plan, plan_name, treatment, listed)
    for rel in logs:
        identity = _log_identity(rel, read_head(rel), infos)
        if identity is None:
            problems.append(
                f"{rel} names no patient or beam (no PlanInfo.txt beside it and no "
                "'# patient_id:' or '# beam_number:' header), so it cannot be matched to "
                "the plan; a site whose logs carry no identity sets "
                "scanner.check_log_identity: false"
            )
            continue
        if identity.source == rel:  # its own header; a PlanInfo.txt was checked above
            problems += _mismatches(identity, plan, plan_name, treatment, listed)
        if identity.beam_number is not None:
            logged.add(identity.beam_number)
    for number, beam in sorted(treatment.items()):
        if number not in logged:
            named = f" ({beam.name})" if beam.name else ""
            problems.append(f"beam {number}{named} of the plan {plan_name} has no delivery log")
    return problems


def _log_identity(rel: str, head: bytes, infos: dict[str, LogIdentity]) -> LogIdentity | None:
    own = read_log_header(head, rel)
    if own.known:
        return own
    folder = posixpath.dirname(rel)
    while True:
        if folder in infos and infos[folder].known:
            return infos[folder]
        if not folder:
            return None
        folder = posixpath.dirname(folder)


def _mismatches(
    identity: LogIdentity,
    plan: PlanIdentity,
    plan_name: str,
    treatment: dict[int, Beam],
    listed: str,
) -> list[str]:
    found = []
    if identity.patient_id is not None and identity.patient_id != plan.patient_id:
        found.append(
            f"{identity.source} names patient {identity.patient_id!r}, but the plan "
            f"{plan_name} is for patient {plan.patient_id!r}"
        )
    if identity.beam_text is not None:
        found.append(
            f"{identity.source} names beam {identity.beam_text!r}, which is not a beam number "
            f"(the plan {plan_name} has treatment beams {listed})"
        )
    elif identity.beam_number is not None and identity.beam_number not in treatment:
        found.append(
            f"{identity.source} names beam {identity.beam_number}, which is not a treatment "
            f"beam of the plan {plan_name} (its treatment beams: {listed})"
        )
    return found


def _identity(source: str, patient: str | None, beam: str | None) -> LogIdentity:
    identity = LogIdentity(source, patient_id=patient or None)
    if beam:
        number = _int(beam)
        if number is None:
            identity.beam_text = beam[:40]
            identity.beam_number = -1  # known to be wrong: counts as "names a beam"
        else:
            identity.beam_number = number
    return identity


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def _int(value: object) -> int | None:
    text = _text(value)
    if not text.lstrip("+-").isdecimal() or len(text) > 9:
        return None
    return int(text)


def _date(value: object) -> dt.date | None:
    text = _text(value)
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None
