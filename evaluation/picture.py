"""PNG pictures of a dose grid and of a gamma map, for the case page.

Every function returns PNG bytes.  Drawing uses matplotlib's object API only (a
``Figure`` with its own Agg canvas): no pyplot, so no global figure registry, current
figure or backend switch is shared between threads.  The three orthogonal slices go
through the maximum dose, in the patient's coordinates with their physical aspect ratio:

* axial (z plane): x to the right, y (anterior to posterior) downwards;
* coronal (y plane): x to the right, z (superior) upwards;
* sagittal (x plane): y to the right, z upwards.

Pictures are cheap but not free; callers cache them, keyed by ``cache_key`` of the files
drawn (path, size, modification time and SHA-256 of each) and the picture's options.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from evaluation.dose import DoseGrid, summarize_dose

if TYPE_CHECKING:  # drawing a dose needs no pymedphys
    from evaluation.gamma import CriterionResult

PICTURE_VERSION = "1"  # part of every cache key: bump when pictures change
DOSE_COLORMAP = "turbo"
GAMMA_MAX = 2.0
# gamma <= 1 in greens (darker is better), > 1 from orange to dark red: pass/fail at a glance
GAMMA_COLORMAP = LinearSegmentedColormap.from_list(
    "gamma_pass_fail",
    [(0.0, "#00441b"), (0.4999, "#b8e6b0"), (0.5, "#fdae61"), (0.75, "#e34a33"), (1.0, "#67000d")],
)
NOT_EVALUATED_COLOR = "#d9d9d9"
_DPI = 100


def dose_picture(
    grid: DoseGrid, *, width_px: int = 1200, height_px: int = 440, title: str | None = None
) -> bytes:
    """Axial, coronal and sagittal slices through the maximum, colour bar in Gy."""
    summary = summarize_dose(grid)
    figure = _figure(width_px, height_px)
    axes = _three_axes(figure)
    top = max(summary.max_dose_gy, 1e-12)
    image = None
    for ax, (plane, extent, origin, labels) in zip(
        axes, _slices(grid.dose_gy, grid, summary.max_index), strict=True
    ):
        image = ax.imshow(
            plane, cmap=DOSE_COLORMAP, vmin=0, vmax=top, extent=extent, origin=origin,
            interpolation="nearest",
        )  # fmt: skip
        _label(ax, *labels)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.03, pad=0.02)
    colorbar.set_label("dose (Gy)")
    heading = title or grid.source or "dose"
    figure.suptitle(f"{heading}\n{summary.describe()}", fontsize=10)
    return _png(figure)


def dose_thumbnail(grid: DoseGrid, *, width_px: int = 160, height_px: int = 60) -> bytes:
    """The axial slice through the maximum, nothing else: for lists."""
    summary = summarize_dose(grid)
    figure = _figure(width_px, height_px)
    ax = figure.add_axes((0, 0, 1, 1))
    plane, extent, origin, _ = _slices(grid.dose_gy, grid, summary.max_index)[0]
    ax.imshow(
        plane, cmap=DOSE_COLORMAP, vmin=0, vmax=max(summary.max_dose_gy, 1e-12), extent=extent,
        origin=origin, interpolation="nearest",
    )  # fmt: skip
    ax.set_axis_off()
    return _png(figure)


def gamma_picture(
    reference: DoseGrid,
    result: CriterionResult,
    *,
    width_px: int = 1200,
    height_px: int = 440,
    title: str | None = None,
) -> bytes:
    """The gamma map of one criterion on the reference's slices through its maximum.

    Colour scale 0 to 2 (higher values shown as 2), the line at 1 marking pass/fail;
    grey where gamma was not evaluated (below the cut-off).
    """
    if result.gamma.shape != reference.shape:
        raise ValueError(
            f"gamma map of shape {result.gamma.shape} is not on the reference grid "
            f"{reference.shape}: draw it with the reference dose it was computed on"
        )
    summary = summarize_dose(reference)
    figure = _figure(width_px, height_px)
    axes = _three_axes(figure)
    colormap = GAMMA_COLORMAP.with_extremes(bad=NOT_EVALUATED_COLOR, over=GAMMA_COLORMAP(1.0))
    shown = np.ma.masked_invalid(result.gamma)
    image = None
    for ax, (plane, extent, origin, labels) in zip(
        axes, _slices(shown, reference, summary.max_index), strict=True
    ):
        image = ax.imshow(
            plane, cmap=colormap, vmin=0, vmax=GAMMA_MAX, extent=extent, origin=origin,
            interpolation="nearest",
        )  # fmt: skip
        _label(ax, *labels)
    colorbar = figure.colorbar(image, ax=axes, fraction=0.03, pad=0.02, extend="max")
    colorbar.set_label("gamma")
    colorbar.set_ticks([0, 0.5, 1, 1.5, 2])
    colorbar.ax.axhline(1.0, color="black", linewidth=2)
    verdict = "PASSED" if result.passed else "FAILED"
    heading = title or f"gamma {result.criterion}"
    figure.suptitle(
        f"{heading}: {result.pass_rate_percent:.1f}% of {result.points_evaluated:,} points "
        f"<= 1, {verdict}\ngreen: pass (gamma <= 1), orange/red: fail, grey: not evaluated",
        fontsize=10,
        color="black" if result.passed else "#b2182b",
    )
    return _png(figure)


def cache_key(paths: Sequence[str | os.PathLike[str]], *, variant: str) -> str:
    """A key that changes when any file drawn changes, or the picture's options do.

    ``variant`` names the picture and its options (e.g. ``"gamma 3%/2mm cut-off 10%"``).
    """
    digest = hashlib.sha256(f"mqi-picture {PICTURE_VERSION} {variant}".encode())
    for path in paths:
        resolved = Path(path).resolve()
        stat = resolved.stat()
        digest.update(f"\0{resolved}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        with resolved.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


# --- drawing ----------------------------------------------------------------------------------


def _figure(width_px: int, height_px: int) -> Figure:
    if width_px < 16 or height_px < 16:
        raise ValueError(f"picture of {width_px} x {height_px} px is too small to draw")
    figure = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _three_axes(figure: Figure) -> list[Axes]:
    return list(figure.subplots(1, 3, gridspec_kw={"left": 0.05, "right": 0.9, "top": 0.82}))


def _slices(
    values: np.ndarray, grid: DoseGrid, at: tuple[int, int, int]
) -> list[tuple[np.ndarray, tuple[float, float, float, float], str, tuple[str, str, str]]]:
    """(plane, extent, origin, (title, x label, y label)) for axial, coronal, sagittal."""
    frame, row, column = at
    x, y, z = (_edges(axis) for axis in (grid.x_mm, grid.y_mm, grid.z_mm))
    return [
        (values[frame, :, :], (x[0], x[1], y[1], y[0]), "upper",
         (f"axial z = {grid.z_mm[frame]:.1f} mm", "x (mm)", "y (mm)")),
        (values[:, row, :], (x[0], x[1], z[0], z[1]), "lower",
         (f"coronal y = {grid.y_mm[row]:.1f} mm", "x (mm)", "z (mm)")),
        (values[:, :, column], (y[0], y[1], z[0], z[1]), "lower",
         (f"sagittal x = {grid.x_mm[column]:.1f} mm", "y (mm)", "z (mm)")),
    ]  # fmt: skip


def _edges(axis: np.ndarray) -> tuple[float, float]:
    """The outer voxel edges along an axis, so each voxel is drawn at its physical size."""
    half = (float(np.median(np.diff(axis))) if len(axis) > 1 else 1.0) / 2
    return float(axis[0]) - half, float(axis[-1]) + half


def _label(ax: Axes, title: str, x_label: str, y_label: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(x_label, fontsize=8)
    ax.set_ylabel(y_label, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_aspect("equal")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()
