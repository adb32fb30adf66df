"""The analytical pencil-beam dose model of the stand-ins: spots in, dose grid out.

The MOQUI stand-in (``moquisim.py``) computes its dose with it from the spots the machine
logs say were *delivered*; the sample generator (``make_sample_cases.py``) computes the
treatment planning system's dose with it from the *planned* spots.  Both therefore agree
exactly when the delivery equals the plan, and differ as much as the delivery does: a
beam given 15 % more monitor units gives up to 15 % more dose where it dominates.

It is no Monte Carlo engine and knows no patient (homogeneous water), but it behaves like
a proton pencil beam where the QA verdict looks:

* **Geometry.**  A beam at gantry angle g travels through the isocentre along
  ``(sin g, cos g, 0)`` in DICOM patient coordinates (x to the patient's left, y
  posterior, z superior).  A spot's position at the isocentre (x, y in the beam's eye
  view) lies along the in-plane lateral axis ``(cos g, -sin g, 0)`` and the z axis.
  No divergence.
* **Depth.**  Range in water by the Bragg-Kleeman rule, R = 0.022 mm * E^1.77 (E in MeV);
  the isocentre sits at a water-equivalent depth of ``ISOCENTER_DEPTH_MM``, so a layer's
  Bragg peak lies R - 143 mm downstream of it.  Proximal to the peak the depth dose falls
  to a plateau (``PLATEAU``) over ``PROXIMAL_WIDTH_MM``; distal to it, it falls off with
  the range straggling (1.2 % of R).
* **Lateral.**  A Gaussian spot of ``SPOT_SIGMA_MM``.
* **Calibration.**  ``GY_PER_MU`` Gy per monitor unit at the Bragg peak on a spot's axis:
  the dose is absolute, so monitor units that differ from the plan change it.

Standard library only: it reads the planned spots from a pydicom dataset it is given but
imports no pydicom itself (the stand-ins import it only after recording their start).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pydicom

GY_PER_MU = 0.25
ISOCENTER_DEPTH_MM = 143.0
PLATEAU = 0.3
PROXIMAL_WIDTH_MM = 10.0
SPOT_SIGMA_MM = 4.0
_NEGLIGIBLE = 1e-6

Spot = tuple[float, float, float, float]
"""One spot: nominal energy (MeV), x and y at the isocentre (mm), monitor units."""


@dataclass(frozen=True)
class Grid:
    """An axial dose grid: voxel centres at origin + index * spacing (x, y, z in mm)."""

    origin_mm: tuple[float, float, float]
    spacing_mm: float
    columns: int
    rows: int
    frames: int

    def axis(self, dimension: int) -> list[float]:
        count = (self.columns, self.rows, self.frames)[dimension]
        return [self.origin_mm[dimension] + index * self.spacing_mm for index in range(count)]

    @property
    def voxels(self) -> int:
        return self.columns * self.rows * self.frames


@dataclass(frozen=True)
class Beam:
    number: int
    gantry_angle: float
    isocenter_mm: tuple[float, float, float]
    spots: tuple[Spot, ...]


def grid_around(
    center_mm: Sequence[float], *, spacing_mm: float, half_extent_mm: Sequence[float]
) -> Grid:
    """A grid centred on ``center_mm`` reaching ``half_extent_mm`` to each side (x, y, z)."""
    counts = [round(2 * half / spacing_mm) + 1 for half in half_extent_mm]
    origin = tuple(
        center - spacing_mm * (count - 1) / 2
        for center, count in zip(center_mm, counts, strict=True)
    )
    return Grid(origin, spacing_mm, counts[0], counts[1], counts[2])  # type: ignore[arg-type]


def range_mm(energy_mev: float) -> float:
    """Proton range in water (Bragg-Kleeman)."""
    return 0.022 * energy_mev**1.77


def depth_dose(depth_from_peak_mm: float, range_in_water_mm: float) -> float:
    """Relative dose along a spot's axis, 1 at the Bragg peak."""
    u = depth_from_peak_mm
    if u <= 0:
        return PLATEAU + (1 - PLATEAU) * math.exp(-(u * u) / (2 * PROXIMAL_WIDTH_MM**2))
    straggling = 0.012 * range_in_water_mm
    return math.exp(-(u * u) / (2 * straggling**2))


def plan_dose(beams: Iterable[Beam], grid: Grid) -> list[float]:
    """The dose of all ``beams`` in Gy, frame-major, then row, then column."""
    total = [0.0] * grid.voxels
    for beam in beams:
        for index, value in enumerate(beam_dose(beam, grid)):
            total[index] += value
    return total


def beam_dose(beam: Beam, grid: Grid) -> list[float]:
    """One beam's dose in Gy, frame-major, then row, then column."""
    angle = math.radians(beam.gantry_angle)
    sin_g, cos_g = math.sin(angle), math.cos(angle)
    iso_x, iso_y, iso_z = beam.isocenter_mm
    dz = [z - iso_z for z in grid.axis(2)]
    along, lateral = [], []  # per pixel of an axial plane, row by row
    for y in grid.axis(1):
        for x in grid.axis(0):
            along.append((x - iso_x) * sin_g + (y - iso_y) * cos_g)
            lateral.append((x - iso_x) * cos_g - (y - iso_y) * sin_g)
    dose = [0.0] * grid.voxels
    plane = grid.columns * grid.rows
    for energy, spots in _layers(beam.spots):
        peak = range_mm(energy) - ISOCENTER_DEPTH_MM
        fluence = _LayerFluence(spots, dz)
        for pixel, (depth, offset) in enumerate(zip(along, lateral, strict=True)):
            relative = depth_dose(depth - peak, range_mm(energy))
            if relative < _NEGLIGIBLE:
                continue
            scale = GY_PER_MU * relative
            for frame, value in enumerate(fluence.at(offset)):
                dose[frame * plane + pixel] += scale * value
    return dose


class _LayerFluence:
    """A layer's spot fluence (MU-weighted Gaussians) on the frames' z, per lateral offset.

    The lateral offset is rounded to 0.01 mm and each value computed once: for a gantry
    at a multiple of 90 degrees a whole column or row of pixels shares one offset.
    """

    def __init__(self, spots: list[Spot], dz: list[float]) -> None:
        self._spots = [(x, mu) for _, x, _, mu in spots]
        two_var = 2 * SPOT_SIGMA_MM**2
        self._along_z = [[math.exp(-((z - y) ** 2) / two_var) for z in dz] for _, _, y, _ in spots]
        self._frames = len(dz)
        self._cache: dict[float, list[float]] = {}

    def at(self, offset_mm: float) -> list[float]:
        key = round(offset_mm, 2)
        values = self._cache.get(key)
        if values is None:
            values = [0.0] * self._frames
            two_var = 2 * SPOT_SIGMA_MM**2
            for (x, mu), along_z in zip(self._spots, self._along_z, strict=True):
                weight = mu * math.exp(-((key - x) ** 2) / two_var)
                if weight < _NEGLIGIBLE:
                    continue
                for frame, value in enumerate(along_z):
                    values[frame] += weight * value
            self._cache[key] = values
        return values


def _layers(spots: Iterable[Spot]) -> list[tuple[float, list[Spot]]]:
    layers: dict[float, list[Spot]] = {}
    for spot in spots:
        layers.setdefault(round(spot[0], 3), []).append(spot)
    return sorted(layers.items(), reverse=True)


def planned_beams(plan: pydicom.Dataset) -> list[Beam]:
    """The treatment beams of an RT Ion Plan with their planned spots in monitor units.

    A spot's MU is its meterset weight times the beam's meterset (fraction group) over the
    beam's final cumulative meterset weight.  Beams without spots (a photon plan) have none.
    """
    meterset = {}
    for group in plan.get("FractionGroupSequence") or []:
        for reference in group.get("ReferencedBeamSequence") or []:
            if "BeamMeterset" in reference:
                meterset[int(reference.ReferencedBeamNumber)] = float(reference.BeamMeterset)
    beams = []
    for beam in plan.get("IonBeamSequence") or plan.get("BeamSequence") or []:
        if beam.get("TreatmentDeliveryType", "TREATMENT") != "TREATMENT":
            continue
        points = beam.get("IonControlPointSequence") or beam.get("ControlPointSequence") or []
        first = points[0] if points else {}
        final = float(beam.get("FinalCumulativeMetersetWeight") or 0) or 1.0
        mu_per_weight = meterset.get(int(beam.BeamNumber), 0.0) / final
        spots: list[Spot] = []
        for point in points:
            if "ScanSpotMetersetWeights" not in point:
                continue
            weights = [float(weight) for weight in point.ScanSpotMetersetWeights]
            positions = [float(value) for value in point.ScanSpotPositionMap]
            energy = float(point.NominalBeamEnergy)
            spots += [
                (energy, positions[2 * i], positions[2 * i + 1], weight * mu_per_weight)
                for i, weight in enumerate(weights)
                if weight > 0
            ]
        isocenter = first.get("IsocenterPosition") or (0.0, 0.0, 0.0)
        beams.append(
            Beam(
                number=int(beam.BeamNumber),
                gantry_angle=float(first.get("GantryAngle") or 0.0),
                isocenter_mm=tuple(float(value) for value in isocenter),  # type: ignore[arg-type]
                spots=tuple(spots),
            )
        )
    return beams
