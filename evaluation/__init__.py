"""The physics of the QA verdict: read RT Dose grids, compare them by gamma, draw them.

One concept per module, none of them touching the database or the workflow:

* ``evaluation.dose``: an RT Dose DICOM file -> ``DoseGrid`` (Gy, coordinates in mm) and
  its ``DoseSummary``; refuses files that cannot be compared safely.
* ``evaluation.gamma``: gamma analysis (pymedphys) of the recomputed dose against the
  planning system's, per criterion, and the verdict; ``sum_doses`` for per-beam doses.
* ``evaluation.picture``: PNG pictures of a dose and of a gamma map.
"""
