"""Tumor models as data: each profile a generation job can name is a composition of named steps.

A :class:`TumorModel` says how its tumors are drawn and painted: which record family its tumors
are (``paper``: one :class:`~.params.PaperTumor` per tumor, each painted on its own box;
``released``: :class:`~.params.ReleasedTumor` shapes united and textured once per sample;
``none``: crops of annotated scans), which location rule places them, which shape and texture
steps make them, which post-processing effects large ones get, its own crop policy, and whether
the compiled kernels (``kernels.paint``) fuse its crops. ``sample``, ``batch``, ``synthesize`` and
the kernels look a model up here by the profile name a sample records and act on these fields,
never on the name.

The texture of ``paper``-family models is a step of the table :data:`TEXTURES` (name -> function
``(backend, row, box_shape, spacing_mm, lo, hi) -> float32 array`` of HU over ``[lo, hi)`` of the
tumor's box). A new texture model is a function, one :data:`TEXTURES` line and one
:class:`TumorModel` entry (:func:`register`); a model that is not built in folds its
:meth:`TumorModel.identity` into the dataset id, so two definitions never share one.

Models that do not ship with tumorforge live in the user's own modules, named in
``TUMORFORGE_PLUGINS`` (comma-separated importable module names, each calling :func:`register` when
imported). They are imported the first time a profile is not found, in every process that looks
one up: the job's driver, each Ray actor (which inherit the environment of the cluster they are
started in), audit and the MONAI transform.

The built-in compositions are the paper's (``../shared/seeds/003``): ``paper-train`` (the training
recipe: random organ location, deformed ellipsoid, Gaussian texture on an eta-mm grid, no
post-processing), ``paper-grain`` (``paper-train`` with the texture's grain matched to each
scan's parenchyma, Section 3.1's "graininess" measured rather than fixed), ``diverse``
(``paper-grain``'s steps with each tumor's look drawn from several families of liver lesions and
lobulated shapes as unions of ellipsoids: ``looks``), ``paper`` (Section 3.1 in full: vessel-avoiding location, mass effect and
capsule for large tumors) and ``released`` (the authors' released training code); ``real`` is no
synthesis at all.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Callable, MutableMapping

from tumorforge.manifests.errors import UserError

from .looks import looks_texture
from .texture import paper_texture

FAMILIES = ("paper", "released", "none")
LOCATIONS = ("organ-random", "vessel-avoiding", "slice", "annotated")
EFFECTS = ("mass-effect", "capsule")


class TumorModelError(UserError, ValueError):
    """A profile that names no registered tumor model, or an entry that does not fit the table."""


@dataclass(frozen=True)
class TumorModel:
    """One composition of tumor steps (see the module docstring for each field's values)."""

    name: str
    family: str                 # record family: paper / released / none
    location: str               # organ-random / vessel-avoiding / slice / annotated
    shape: str                  # the shape step's name (recorded in the identity)
    texture: str                # key of TEXTURES for the paper family; "" otherwise
    effects: tuple[str, ...]    # post-processing drawn for large tumors (paper family)
    crop_policy: str            # tumor-centred / pos-neg
    fused: bool                 # the compiled kernels paint its crops
    builtin: bool = False       # shipped with tumorforge: its identity is the generator version

    @property
    def avoids_vessels(self) -> bool:
        return self.location == "vessel-avoiding"

    @property
    def synthetic(self) -> bool:
        return self.family != "none"

    def identity(self) -> dict:
        """What defines the model's tumors besides the generator configuration."""
        out = dataclasses.asdict(self)
        out.pop("builtin")
        out["effects"] = list(self.effects)
        return out


TextureStep = Callable[..., object]

# "scan-grain-grid" is the Gaussian grid with one spacing per axis, each drawn from the scan's
# parenchyma grain (``grain.grid_for_scan``) instead of the paper's fixed eta range.
SCAN_GRAIN = "scan-grain-grid"
TEXTURES: MutableMapping[str, TextureStep] = {"gaussian-grid": paper_texture,
                                              SCAN_GRAIN: paper_texture}
FUSED_TEXTURES = ("gaussian-grid", SCAN_GRAIN)      # what the compiled kernels compute
# "salt-noise-blur": the released recipe's texture bank (``texture.released_texture``), which the
# kernels of ``kernels/released.cu`` also compute.
RELEASED_TEXTURE = "salt-noise-blur"
# "looks": the scan-matched grid with a look drawn per tumor from several families (``looks``).
LOOKS_TEXTURE = "looks"
TEXTURES[LOOKS_TEXTURE] = looks_texture

TUMOR_MODELS: MutableMapping[str, TumorModel] = {m.name: m for m in (
    TumorModel("paper-train", "paper", "organ-random", "deformed-ellipsoid", "gaussian-grid", (),
               "tumor-centred", fused=True, builtin=True),
    TumorModel("paper-grain", "paper", "organ-random", "deformed-ellipsoid", SCAN_GRAIN, (),
               "tumor-centred", fused=True, builtin=True),
    TumorModel("diverse", "paper", "organ-random", "lobulated-ellipsoids", LOOKS_TEXTURE, (),
               "tumor-centred", fused=False, builtin=True),
    TumorModel("paper", "paper", "vessel-avoiding", "deformed-ellipsoid", "gaussian-grid",
               EFFECTS, "tumor-centred", fused=True, builtin=True),
    TumorModel("released", "released", "slice", "released-ellipsoid", RELEASED_TEXTURE, (),
               "pos-neg", fused=True, builtin=True),
    TumorModel("real", "none", "annotated", "", "", (), "tumor-centred", fused=False,
               builtin=True),
)}


PLUGINS_ENV = "TUMORFORGE_PLUGINS"
_plugins_loaded: set[str] = set()


def load_plugins() -> None:
    """Import the modules named in ``TUMORFORGE_PLUGINS`` that are not imported yet."""
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        if module in _plugins_loaded:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise TumorModelError(f"{PLUGINS_ENV}: cannot import {module!r} ({exc})") from None
        _plugins_loaded.add(module)


def tumor_model(name: str, where: str = "profile") -> TumorModel:
    """The registered model called ``name`` (after importing the plugins if it is not there yet);
    anything else is a one-line :class:`TumorModelError`."""
    if isinstance(name, str) and name not in TUMOR_MODELS:
        load_plugins()
    try:
        return TUMOR_MODELS[name]
    except (KeyError, TypeError):
        raise TumorModelError(f"{where}: unknown profile {name!r}; expected one of "
                              f"{', '.join(TUMOR_MODELS)}") from None


def names(family: str | None = None, synthetic: bool | None = None) -> tuple[str, ...]:
    """Registered model names, optionally of one record ``family`` or only (non-)synthetic ones."""
    return tuple(m.name for m in TUMOR_MODELS.values()
                 if (family is None or m.family == family)
                 and (synthetic is None or m.synthetic == synthetic))


def register(model: TumorModel, texture: TextureStep | None = None) -> TumorModel:
    """Add ``model`` (and its texture step, if new) to the tables. Its fields are checked against
    what the drawing and painting code knows; a built-in name cannot be replaced."""
    if model.name in TUMOR_MODELS and TUMOR_MODELS[model.name].builtin:
        raise TumorModelError(f"tumor model {model.name!r} is built in and cannot be replaced")
    if model.builtin:
        raise TumorModelError(f"tumor model {model.name!r}: only shipped models are built in")
    if texture is not None:
        TEXTURES[model.texture] = texture
    problems = [f"family {model.family!r} not in {FAMILIES}"] * (model.family not in FAMILIES)
    problems += [f"location {model.location!r} not in {LOCATIONS}"] * (
        model.location not in LOCATIONS)
    problems += [f"effects {model.effects} not within {EFFECTS}"] * (
        not set(model.effects) <= set(EFFECTS))
    problems += [f"texture {model.texture!r} has no step in TEXTURES"] * (
        model.family == "paper" and model.texture not in TEXTURES)
    problems += [f"the kernels fuse only paper-family models with a texture of {FUSED_TEXTURES}"
                 f" and released-family models with {RELEASED_TEXTURE!r}"
                 ] * (model.fused and not (
                     (model.family == "paper" and model.texture in FUSED_TEXTURES)
                     or (model.family == "released" and model.texture == RELEASED_TEXTURE)))
    if problems:
        raise TumorModelError(f"tumor model {model.name!r}: " + "; ".join(problems))
    TUMOR_MODELS[model.name] = model
    return model
