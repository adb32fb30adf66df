"""Who and what a folder is about, and whether its delivery logs belong to its plan."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cases.folder import RT_ION_PLAN_STORAGE, FolderState, LogCheck
from cases.identity import Beam, PlanIdentity
from tests.cases.test_folder import inspect

pytestmark = pytest.mark.pure


PATIENT = "QA0007"


def ion_plan(path: Path, beams=((1, "B1 G090", "TREATMENT"), (2, "B2 G270", "TREATMENT"))):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_ION_PLAN_STORAGE
    meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    plan = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    plan.SOPClassUID = RT_ION_PLAN_STORAGE
    plan.SOPInstanceUID = uid
    plan.Modality = "RTPLAN"
    plan.PatientID = PATIENT
    plan.PatientName = "Doe^Jane"
    plan.RTPlanLabel = "PROST PBS"
    plan.RTPlanDate = "20251103"
    items = []
    for number, name, kind in beams:
        beam = Dataset()
        beam.BeamNumber = number
        beam.BeamName = name
        beam.TreatmentDeliveryType = kind
        beam.TreatmentMachineName = "PBS-G1"
        items.append(beam)
    plan.IonBeamSequence = Sequence(items)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan.save_as(path, enforce_file_format=True)
    return path


def text_log(path: Path, *, beam: int, patient: str = PATIENT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# MQI machine delivery log (plain-text spot log)\n"
        f"# patient_id: {patient}\n# beam_number: {beam}\n"
        "# columns: layer energy_mev x_mm y_mm mu\n1 150.000 0.00 0.00 0.500000\n"
    )
    return path


def plan_info(folder: Path, *, beam: int | str, patient: str = PATIENT) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "PlanInfo.txt").write_text(
        f"DICOM_PATIENT_ID,{patient}\nDICOM_BEAM_NUMBER,{beam}\nGANTRY_ANGLE,90\n"
    )


@pytest.fixture
def case(tmp_path: Path) -> Path:
    folder = tmp_path / "QA-7"
    ion_plan(folder / "RP.plan.dcm")
    text_log(folder / "beam1.ptn", beam=1)
    text_log(folder / "beam2.ptn", beam=2)
    (folder / "READY").write_text("")
    return folder


def test_the_plans_identity_is_read_and_setup_beams_are_left_out(tmp_path: Path) -> None:
    folder = tmp_path / "QA-8"
    ion_plan(
        folder / "RP.plan.dcm",
        beams=((1, "B1", "TREATMENT"), (2, "SETUP", "SETUP"), (3, "B3", "TREATMENT")),
    )
    text_log(folder / "beam1.ptn", beam=1)
    text_log(folder / "beam3.ptn", beam=3)
    (folder / "READY").write_text("")

    verdict = inspect(folder)

    assert verdict.state == FolderState.READY_VALID, verdict.reasons
    assert verdict.identity == PlanIdentity(
        patient_id=PATIENT,
        patient_name="Doe^Jane",
        plan_label="PROST PBS",
        plan_date=dt.date(2025, 11, 3),
        treatment_machine="PBS-G1",
        beams=(Beam(1, "B1"), Beam(3, "B3")),
    )
    assert verdict.log_check == LogCheck.PASSED


def test_logs_that_name_the_plans_patient_and_beams_pass(case: Path) -> None:
    verdict = inspect(case)

    assert verdict.state == FolderState.READY_VALID
    assert verdict.log_check == LogCheck.PASSED


def test_a_log_of_another_patient_makes_the_folder_invalid(case: Path) -> None:
    text_log(case / "beam2.ptn", beam=2, patient="QA0099")

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.log_check == LogCheck.FAILED
    assert verdict.reasons == [
        "beam2.ptn names patient 'QA0099', but the plan RP.plan.dcm is for patient 'QA0007'"
    ]


def test_a_log_of_a_beam_the_plan_does_not_treat_makes_the_folder_invalid(case: Path) -> None:
    text_log(case / "beam2.ptn", beam=5)

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == [
        "beam2.ptn names beam 5, which is not a treatment beam of the plan RP.plan.dcm "
        "(its treatment beams: 1, 2)",
        "beam 2 (B2 G270) of the plan RP.plan.dcm has no delivery log",
    ]


def test_a_treatment_beam_without_a_log_makes_the_folder_invalid(case: Path) -> None:
    (case / "beam2.ptn").unlink()

    verdict = inspect(case)

    assert verdict.reasons == ["beam 2 (B2 G270) of the plan RP.plan.dcm has no delivery log"]


def test_plan_info_files_identify_the_logs_beside_them(tmp_path: Path) -> None:
    folder = tmp_path / "QA-9"
    ion_plan(folder / "RP.plan.dcm")
    for beam in (1, 2):
        plan_info(folder / f"beam{beam}", beam=beam)
        (folder / f"beam{beam}" / "log_01.ptn").write_bytes(b"\x00\x01binary spot log")
    (folder / "READY").write_text("")

    verdict = inspect(folder)

    assert verdict.state == FolderState.READY_VALID, verdict.reasons
    assert verdict.log_check == LogCheck.PASSED


def test_a_plan_info_of_another_patient_makes_the_folder_invalid(tmp_path: Path) -> None:
    folder = tmp_path / "QA-10"
    ion_plan(folder / "RP.plan.dcm")
    plan_info(folder / "beam1", beam=1)
    plan_info(folder / "beam2", beam=2, patient="OTHER-1")
    for beam in (1, 2):
        (folder / f"beam{beam}" / "log.ptn").write_bytes(b"\x00binary")
    (folder / "READY").write_text("")

    verdict = inspect(folder)

    assert verdict.reasons == [
        "beam2/PlanInfo.txt names patient 'OTHER-1', but the plan RP.plan.dcm is for patient "
        "'QA0007'"
    ]


def test_a_beam_number_that_is_not_a_number_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "QA-11"
    ion_plan(folder / "RP.plan.dcm", beams=((1, "B1", "TREATMENT"),))
    plan_info(folder / "beam1", beam="one")
    (folder / "beam1" / "log.ptn").write_bytes(b"\x00binary")
    (folder / "READY").write_text("")

    verdict = inspect(folder)

    assert verdict.reasons[0] == (
        "beam1/PlanInfo.txt names beam 'one', which is not a beam number "
        "(the plan RP.plan.dcm has treatment beams 1)"
    )


def test_a_log_that_names_nobody_cannot_be_matched(case: Path) -> None:
    (case / "beam2.ptn").write_bytes(b"\x00binary log without identity")

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons[0].startswith("beam2.ptn names no patient or beam")
    assert "scanner.check_log_identity: false" in verdict.reasons[0]


def test_a_site_whose_logs_carry_no_identity_turns_the_check_off(case: Path) -> None:
    for log in ("beam1.ptn", "beam2.ptn"):
        (case / log).write_bytes(b"\x00binary log without identity")

    verdict = inspect(case, check_log_identity=False)

    assert verdict.state == FolderState.READY_VALID
    assert verdict.log_check == LogCheck.OFF


def test_two_different_plans_make_the_folder_invalid(case: Path) -> None:
    ion_plan(case / "RP.other.dcm")

    verdict = inspect(case)

    assert verdict.state == FolderState.READY_INVALID
    assert verdict.reasons == [
        "the folder holds 2 different RTPLANs (RP.other.dcm, RP.plan.dcm); a case folder "
        "holds the one plan that was delivered"
    ]
    assert verdict.identity is None


def test_a_plan_with_only_setup_beams_is_invalid(tmp_path: Path) -> None:
    folder = tmp_path / "QA-12"
    ion_plan(folder / "RP.plan.dcm", beams=((1, "SETUP", "SETUP"),))
    text_log(folder / "beam1.ptn", beam=1)
    (folder / "READY").write_text("")

    verdict = inspect(folder)

    assert verdict.reasons == [
        "RP.plan.dcm has no treatment beams (only setup beams or beams without a number)"
    ]


def test_the_identity_survives_a_message(case: Path) -> None:
    identity = inspect(case).identity
    assert identity is not None

    assert PlanIdentity.from_payload(identity.as_payload()) == identity
