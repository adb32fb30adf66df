"""Cases brought to their evaluate step with real doses: the sample's planning system's
dose (RD.tps.dcm) and a "MOQUI" dose made from it in the run's results folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from cases import provenance
from cases.models import Case, WorkflowStep
from conductor.actors import conductor
from mqi_site.messaging import QUEUES, Command
from tests.conductor.helpers import active_run, register_sample, succeed
from tests.conftest import drain
from workers import evaluate

TPS_DOSE = "RD.tps.dcm"


def moqui_dose(case: Case, name: str, *, factor: float = 1.0, beam: int = 0) -> Path:
    """MOQUI's dose in the case's results: the planning system's, times ``factor``; with
    ``beam``, that beam's part of it (the plan's two beams, half each)."""
    dataset = pydicom.dcmread(Path(case.source_path) / TPS_DOSE)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.DoseGridScaling = float(dataset.DoseGridScaling) * factor * (0.5 if beam else 1)
    if beam:
        dataset.DoseSummationType = "BEAM"
        reference = Dataset()
        reference.ReferencedBeamNumber = beam
        group = Dataset()
        group.ReferencedFractionGroupNumber = 1
        group.ReferencedBeamSequence = DicomSequence([reference])
        dataset.ReferencedRTPlanSequence[0].ReferencedFractionGroupSequence = DicomSequence([group])
    path = results_dir(case) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def results_dir(case: Case) -> Path:
    return provenance.run_paths(Case.objects.get(pk=case.pk)).results_dir


def at_evaluation(case: Case, *files: Path) -> WorkflowStep:
    """Upload, interpreter and simulation done; the download brought ``files``."""
    for _ in range(3):
        succeed(active_run(case))
    listed = [
        {
            "path": str(path.relative_to(results_dir(case))),
            "size": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        for path in files
    ]
    succeed(active_run(case), files=listed)
    run = active_run(case)
    assert run.type == "evaluate"
    return run


def evaluated(run: WorkflowStep, stub_broker) -> Case:
    """Run the worker on ``run``, then let the conductor act on what it reported."""
    evaluate.handle(Command.EVALUATE_RESULTS, {"case_id": run.case.case_id, "step_run_id": run.pk})
    for message in drain(stub_broker, QUEUES["conductor"]):
        conductor(*message.args)
    return Case.objects.get(pk=run.case_id)


def evaluated_case(case_id: str, broker, *, factor: float = 1.0) -> Case:
    """A sample case run to its end, its MOQUI dose the planning system's times ``factor``."""
    case = register_sample(case_id)
    dose = moqui_dose(case, "RTDOSE.dcm", factor=factor)
    log = dose.parent / "moqui.log"
    log.write_text("MOQUI stand-in: 5 of 5 batches\ndose written to RTDOSE.dcm\n")
    return evaluated(at_evaluation(case, dose, log), broker)
