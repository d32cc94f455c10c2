"""Organs as data: what every stage needs to know about the organ tumors are painted into.

One :class:`Organ` record per organ, in one table, :data:`ORGANS`. A scan's manifest entry names
its organ; the generator reads the organ's tumor sizes, intensity prior and vessel rule from its
record; the trainer reads its class names and training window; evaluation checks a model's classes
against it. A new organ is one more entry here (plus, where its anatomy differs, the location rule
the record names), not a branch in the stages.

The liver's values are the paper's (``../shared/seeds/003``): sizes from Table 6, the tumor
intensity prior and vessel threshold from Table 1, the training window of its recipe.
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

# The table. An entry is added here (or, for a user's own organ, set into it before use).
ORGANS: dict[str, Organ] = {o.name: o for o in (_LIVER,)}


def get_organ(name: str, where: str = "organ") -> Organ:
    """The organ called ``name``; an unknown name is a one-line :class:`OrganError`."""
    try:
        return ORGANS[name]
    except (KeyError, TypeError):
        raise OrganError(f"{where}: unknown organ {name!r}; expected one of "
                         f"{', '.join(ORGANS)}") from None
