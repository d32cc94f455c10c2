"""The generator's public surface for downstream stages.

Evaluation (and any later stage that paints or measures tumors) imports generator things from here
only, so the generator's rooms (location, shape, texture, effects, scan preparation, whole-scan
output) can be rearranged without touching their readers: drawing and rendering a sample, the
backends, the configuration and its command-line options, the records a sample is described by,
prepared scans and how to load them, how a picture's panels are labelled, reading a ``tumorforge synthesize`` run, what the location
rules count, the output version and the errors a user can cause.
"""

from __future__ import annotations

from tumorforge.generator import GENERATOR_VERSION
from tumorforge.generator.backend import BACKENDS, DEFAULT_BACKEND, BackendError, get_backend
from tumorforge.generator.config import (DEFAULT_PROFILE, PAPER_PROFILES, PAPER_SIZES,
                                         SYNTHETIC_PROFILES, GeneratorConfig)
from tumorforge.generator.grain import grain_mm, interior
from tumorforge.generator.location import drawn_shape_counts, region_counts
from tumorforge.generator.options import add_generator_options, generator_overrides, parse_mix
from tumorforge.generator.params import PaperTumor, SampleParams
from tumorforge.generator.prepare import PreparedScan, PrepareError, Regrid, organ_depth
from tumorforge.generator.preview import decorate_panel
from tumorforge.generator.sample import sample_params, sample_seed
from tumorforge.generator.scans import load_prepared, read_scan
from tumorforge.generator.synthesize import synthesize
from tumorforge.generator.whole_scan import SynthesizeError, output_grid, read_run, spacing_of

__all__ = [
    # drawing and rendering a sample
    "sample_params", "sample_seed", "synthesize",
    # where it runs
    "BACKENDS", "DEFAULT_BACKEND", "get_backend",
    # configuration and its command-line options
    "GeneratorConfig", "DEFAULT_PROFILE", "PAPER_PROFILES", "SYNTHETIC_PROFILES", "PAPER_SIZES",
    "add_generator_options", "generator_overrides", "parse_mix",
    # the records a sample is described by
    "SampleParams", "PaperTumor",
    # prepared scans
    "PreparedScan", "Regrid", "organ_depth", "load_prepared", "read_scan",
    # how grainy a region is (the scan-matched texture's measure)
    "grain_mm", "interior",
    # what the location rules count
    "region_counts", "drawn_shape_counts",
    # pictures: a panel's orientation letters and scale bar
    "decorate_panel",
    # a ``tumorforge synthesize`` run read back
    "read_run", "output_grid", "spacing_of",
    # the version of the generator's output, and the errors a user can cause
    "GENERATOR_VERSION", "BackendError", "PrepareError", "SynthesizeError",
]
