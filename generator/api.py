"""The generator's public surface for downstream stages.

Evaluation (and any later stage that paints or measures tumors) imports generator things from here
only, so the generator's rooms (location, shape, texture, effects, scan preparation, whole-scan
output) can be rearranged without touching their readers: drawing and rendering a sample, the
backends, the configuration and its command-line options, the records a sample is described by,
prepared scans and how to load them, reading a ``tumorforge synthesize`` run, what the location
rules count, the output version and the errors a user can cause.

Each name loads its home module on first use, so a command's parser that needs only the options
(``add_generator_options``) does not import scan preparation, NIfTI and the renderers.
"""

from importlib import import_module

_HOME = {
    "tumorforge.generator": ("GENERATOR_VERSION",),
    "tumorforge.generator.backend": ("BACKENDS", "DEFAULT_BACKEND", "BackendError",
                                     "get_backend"),
    "tumorforge.generator.config": ("PAPER_PROFILES", "PAPER_SIZES", "SYNTHETIC_PROFILES",
                                    "GeneratorConfig"),
    "tumorforge.generator.grain": ("grain_mm", "interior"),
    "tumorforge.generator.location": ("drawn_shape_counts", "region_counts"),
    "tumorforge.generator.options": ("add_generator_options", "generator_overrides", "parse_mix"),
    "tumorforge.generator.params": ("PaperTumor", "SampleParams"),
    "tumorforge.generator.prepare": ("PreparedScan", "PrepareError", "Regrid", "organ_depth"),
    "tumorforge.generator.sample": ("sample_params", "sample_seed"),
    "tumorforge.generator.scans": ("load_prepared", "read_scan"),
    "tumorforge.generator.synthesize": ("synthesize",),
    "tumorforge.generator.whole_scan": ("SynthesizeError", "output_grid", "read_run",
                                        "spacing_of"),
}
_MODULE_OF = {name: module for module, names in _HOME.items() for name in names}


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value                   # later lookups are plain attribute reads
    return value


__all__ = sorted(_MODULE_OF)
