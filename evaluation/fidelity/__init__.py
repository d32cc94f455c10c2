"""The generator fidelity report (``tumorforge stats``): how synthetic tumors differ from real ones.

Inputs, any of them side by side: generated datasets (crops with provenance), ``tumorforge
synthesize`` output folders (whole scans as NIfTI), and manifests of annotated scans (real lesions).
Every lesion, synthetic or real, is measured the same way on the arrays it was stored as, and the
report sets the distributions side by side per size type, with two-sample tests against the real
lesions and against reference generators' lesion tables. One module per step, in the order the data flows:

- ``lesions``: measuring lesions on arrays (radius, contrast, HU drop, depth, texture) and the
  size type or tumor record each belongs to;
- ``post_effects``: the paper profile's mass effect and capsule, measured by paired synthesis;
- ``prepared``: the prepared scans the measures read depth and parenchyma from, cached;
- ``inputs``: reading datasets, synthesize outputs and real-lesion manifests into lesions, tumor
  records and post-processing measurements;
- ``aggregate``: distributions per (input, origin, size type), shares and KS tests;
- ``output``: the printed table, ``stats.json``, ``lesions.csv`` and the histograms;
- ``lesion_table``: the lesion table (CSV, one row per lesion) that ``--out`` writes and
  ``--reference`` reads back as a reference generator's lesions;
- ``command``: the command that runs them, with one-line errors naming the input.

The names below are the report's public surface (the command line and tests use them).
"""

from .aggregate import compare_to_real, compare_to_reference, summarize_groups, summarize_post
from .command import DEFAULT_POST_EFFECTS, run
from .inputs import FidelityError, Measured
from .lesions import measure_scan, size_bins
from .output import DEFINITIONS, format_table, report

__all__ = ["DEFAULT_POST_EFFECTS", "DEFINITIONS", "FidelityError", "Measured", "compare_to_real",
           "compare_to_reference", "format_table", "measure_scan", "report", "run", "size_bins", "summarize_groups",
           "summarize_post"]
