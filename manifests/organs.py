"""Organs as data: what every stage needs to know about the organ tumors are painted into.

One :class:`Organ` record per organ, in one table, :data:`ORGANS`. A scan's manifest entry names
its organ; the generator reads the organ's tumor sizes, intensity prior and vessel rule from its
record; the trainer reads its class names and training window; evaluation checks a model's classes
against it. A new organ is one more entry here (plus, where its anatomy differs, the location rule
the record names), not a branch in the stages.

The liver's values are the paper's (``../shared/seeds/003``): sizes from Table 6, the tumor
intensity prior and vessel threshold from Table 1, the training window of its recipe. The pancreas
and the kidney follow DiffTumor (``../shared/seeds/002``) where it states a value and say why where
it does not; see :data:`_PANCREAS` and :data:`_KIDNEY`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from .errors import UserError

DEFAULT_ORGAN = "liver"


class OrganError(UserError, ValueError):
    """An organ name that is not in the table."""


@dataclass(frozen=True)
class SizePreset:
    """One tumor size class: nominal radius r (mm), elastic deformation sigma_e range (mm of
    control-point displacement), and the discrete uniform count range [lo, hi]."""

    radius_mm: float
    sigma_e_mm: tuple[float, float]
    count: tuple[int, int]


@dataclass(frozen=True)
class TumorPrior:
    """Where a tumor's mean intensity mu_t is drawn: U(low_hu, mu_p - below_parenchyma_hu), mu_p
    being the organ's parenchyma mean (hypoattenuating lesions, Table 1 of the paper)."""

    low_hu: float
    below_parenchyma_hu: float


@dataclass(frozen=True)
class Organ:
    """What the stages know about one organ.

    ``classes``: the label names of crops and model outputs, value c meaning ``classes[c]``
    (background, the organ, tumor). ``training_window_hu``: the HU window models see, scaled to
    [0, 1]. ``vessel_b_hu``: b of the paper's eq. 2 (vessels are organ voxels brighter than the
    organ mean + b after smoothing). ``erosion_mm``: the in-plane erosion of the slice-based
    location rule. ``inside_share``: the share of a tumor's drawn shape that must lie inside the
    organ. The generator configuration takes its defaults from these
    (``GeneratorConfig.for_organ``); a job spec may still override each.
    """

    name: str
    classes: tuple[str, ...]
    training_window_hu: tuple[float, float]
    sizes: Mapping[str, SizePreset]
    tumor_prior: TumorPrior
    vessel_b_hu: float
    erosion_mm: float
    inside_share: float


_LIVER = Organ(
    name="liver",
    classes=("background", "liver", "tumor"),
    training_window_hu=(-21.0, 189.0),
    sizes=MappingProxyType({
        "tiny": SizePreset(4.0, (0.5, 1.0), (3, 10)),
        "small": SizePreset(8.0, (1.0, 2.0), (3, 10)),
        "medium": SizePreset(16.0, (3.0, 6.0), (2, 5)),
        "large": SizePreset(32.0, (5.0, 10.0), (1, 3)),
    }),
    tumor_prior=TumorPrior(low_hu=30.0, below_parenchyma_hu=10.0),
    vessel_b_hu=15.0,
    erosion_mm=5.0,
    inside_share=0.9,
)

# DiffTumor's tumor sizes (radii 3-5, 6-10, 12-20 and 24-64 voxels at 1 mm) as presets of
# nominal radius r, drawn as half-axes in [0.75 r, 1.25 r]: tiny 3-5, small 6-10 and medium 12-20
# match; large gives 24-40, not 24-64 (one r cannot span more than 1.67x; 64 mm would fill either
# organ). Counts are DiffTumor's: 1-3 early (tiny or small) tumors, one medium, one large. Its
# "early" type (tiny or small with probability 0.8, medium 0.1, large 0.1) is a mix of two presets,
# not a preset of its own: a job asks for it with ``size_mix: {tiny: 0.4, small: 0.4, medium: 0.1,
# large: 0.1}`` (tiny and small taken as equally likely within early). Deformation sigmas are the
# liver's (the paper's Table 6).
_DIFFTUMOR_SIZES = MappingProxyType({
    "tiny": SizePreset(4.0, (0.5, 1.0), (1, 3)),
    "small": SizePreset(8.0, (1.0, 2.0), (1, 3)),
    "medium": SizePreset(16.0, (3.0, 6.0), (1, 1)),
    "large": SizePreset(32.0, (5.0, 10.0), (1, 1)),
})

# DiffTumor's window for every organ it covers.
_DIFFTUMOR_WINDOW_HU = (-175.0, 250.0)

# The pancreas (MSD Task07_Pancreas: 1 pancreas, 2 tumor). Ductal adenocarcinoma, the tumor of that
# set, is hypoattenuating against the enhancing parenchyma: mu_t ~ U(20, mu_p - 15) HU. The floor
# keeps a solid mass above the water density (0-20 HU) of the cystic lesions the set also holds;
# 15 HU below the parenchyma is a clearly darker mass (isoattenuating tumors are left out).
# Vessel b 30 HU, not the liver's 15: few vessels run inside the pancreas's label (the splenic vein
# and the mesenteric vessels border it), so the rule should only catch vessels the label takes in,
# not the brighter half of the parenchyma's noise. No erosion (DiffTumor erodes the liver only).
_PANCREAS = Organ(
    name="pancreas",
    classes=("background", "pancreas", "tumor"),
    training_window_hu=_DIFFTUMOR_WINDOW_HU,
    sizes=_DIFFTUMOR_SIZES,
    tumor_prior=TumorPrior(low_hu=20.0, below_parenchyma_hu=15.0),
    vessel_b_hu=30.0,
    erosion_mm=0.0,
    inside_share=0.9,
)

# Both kidneys, one organ (KiTS: 1 kidney, 2 tumor; KiTS23's 3 cyst is counted as kidney, see
# ``manifests/layouts.py``). Renal cell carcinomas enhance less than the renal cortex in the
# nephrographic and portal venous phases: mu_t ~ U(20, mu_p - 20) HU; the floor keeps a synthetic
# tumor above the 0-20 HU of simple cysts, which KiTS23 labels as cysts, not tumors. Vessel b
# 80 HU: in the corticomedullary phase the cortex is several tens of HU brighter than the organ's
# mean (cortex and medulla together), and a small b would call the whole cortex vessel; at 80 the
# rule keeps to the hilar vessels a label takes in. No erosion. Inside share 0.9 as for the liver:
# the generator clips every tumor to its organ, so a lower share would paint truncated tumors, not
# the exophytic masses DiffTumor grows (they need a generator change, not a value here).
_KIDNEY = Organ(
    name="kidney",
    classes=("background", "kidney", "tumor"),
    training_window_hu=_DIFFTUMOR_WINDOW_HU,
    sizes=_DIFFTUMOR_SIZES,
    tumor_prior=TumorPrior(low_hu=20.0, below_parenchyma_hu=20.0),
    vessel_b_hu=80.0,
    erosion_mm=0.0,
    inside_share=0.9,
)

# The table. An entry is added here (or, for a user's own organ, set into it before use).
ORGANS: dict[str, Organ] = {o.name: o for o in (_LIVER, _PANCREAS, _KIDNEY)}


def get_organ(name: str, where: str = "organ") -> Organ:
    """The organ called ``name``; an unknown name is a one-line :class:`OrganError`."""
    try:
        return ORGANS[name]
    except (KeyError, TypeError):
        raise OrganError(f"{where}: unknown organ {name!r}; expected one of "
                         f"{', '.join(ORGANS)}") from None
