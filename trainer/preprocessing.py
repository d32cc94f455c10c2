"""What a model was trained on, saved inside every checkpoint (nnU-Net's "plans" idea): the voxel
spacing and crop size of its training crops, the intensity window, the class names and the ids of
the datasets it saw. Inference and robustness read it back instead of assuming 1 mm, a window or a
window size, so a model trained on other crops is run the way it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

from tumorforge.manifests.organs import get_organ
from tumorforge.manifests.records import RecordError, check_fields

PREPROCESSING_VERSION = 1


@dataclass(frozen=True)
class Preprocessing:
    spacing_mm: tuple[float, float, float]      # isotropic resampling of the training crops
    crop_size: tuple[int, int, int]             # crop sides along (R, A, S); tensors are (Z, Y, X)
    window_hu: tuple[float, float]              # HU window scaled to [0, 1]
    class_names: tuple[str, ...]                # output channel c means class_names[c]
    dataset_ids: tuple[str, ...]                # datasets of the training mix, in source order
    preprocessing_version: int = PREPROCESSING_VERSION

    @property
    def roi(self) -> tuple[int, int, int]:
        """Sliding-window size in the model's (Z, Y, X) order."""
        return tuple(self.crop_size[::-1])

    def to_json(self) -> dict:
        return {"spacing_mm": list(self.spacing_mm), "crop_size": list(self.crop_size),
                "window_hu": list(self.window_hu), "class_names": list(self.class_names),
                "dataset_ids": list(self.dataset_ids),
                "preprocessing_version": self.preprocessing_version}

    @classmethod
    def from_json(cls, obj, where: str) -> "Preprocessing":
        data = check_fields(cls, obj, where)
        if data.get("preprocessing_version", PREPROCESSING_VERSION) != PREPROCESSING_VERSION:
            raise RecordError(f"{where}: preprocessing_version {data['preprocessing_version']!r} "
                              f"is not supported (expected {PREPROCESSING_VERSION})")
        try:
            return cls(spacing_mm=tuple(float(s) for s in data["spacing_mm"]),
                       crop_size=tuple(int(n) for n in data["crop_size"]),
                       window_hu=tuple(float(w) for w in data["window_hu"]),
                       class_names=tuple(str(c) for c in data["class_names"]),
                       dataset_ids=tuple(str(d) for d in data["dataset_ids"]))
        except (TypeError, ValueError) as exc:
            raise RecordError(f"{where}: {exc}") from None

    @classmethod
    def of_datasets(cls, datasets) -> "Preprocessing":
        """The preprocessing of a training mix: spacing and crop size from its datasets, class
        names and window from their organ's record. Every dataset must share all three."""
        first = datasets[0]
        for ds in datasets[1:]:
            if (ds.index.spacing_mm, ds.index.crop_size) != (first.index.spacing_mm,
                                                             first.index.crop_size):
                raise RecordError(
                    f"{ds.url} has {ds.index.crop_size} crops at {ds.index.spacing_mm} mm but "
                    f"{first.url} has {first.index.crop_size} at {first.index.spacing_mm} mm: "
                    "the datasets of one training mix must share crop size and spacing")
            if ds.index.organ != first.index.organ:
                raise RecordError(f"{ds.url} holds {ds.index.organ} tumors but {first.url} "
                                  f"holds {first.index.organ} tumors: the datasets of one "
                                  "training mix must share their organ")
        organ = get_organ(first.index.organ, first.url)
        return cls(spacing_mm=first.index.spacing_mm, crop_size=first.index.crop_size,
                   window_hu=organ.training_window_hu, class_names=organ.classes,
                   dataset_ids=tuple(ds.dataset_id for ds in datasets))
