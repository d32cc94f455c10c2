"""Loading manifest scans for synthesis: read, verify against the manifest, prepare."""

from __future__ import annotations

from .config import GeneratorConfig
from .prepare import PreparedScan, prepare_scan
from tumorforge.manifests.build import check_pair
from tumorforge.manifests.nifti import ScanError, Volume, read_volume
from tumorforge.manifests.schema import ScanEntry


def read_scan(entry: ScanEntry) -> tuple[Volume, Volume]:
    """A scan's image and label volumes, checked against the manifest's sha256 and for content
    (``manifests.build.check_pair``: finite, non-constant image; label on the image's grid).

    Raises :class:`ScanError` naming the file when it is unreadable or differs from the manifest.
    """
    image = read_volume(entry.image)
    if image.sha256 != entry.sha256["image"]:
        raise ScanError(entry.image, f"sha256 {image.sha256[:12]}... differs from the manifest's "
                                     f"{entry.sha256['image'][:12]}... (file changed since build)")
    label = read_volume(entry.label)
    if label.sha256 != entry.sha256["label"]:
        raise ScanError(entry.label, f"sha256 {label.sha256[:12]}... differs from the manifest's "
                                     f"{entry.sha256['label'][:12]}... (file changed since build)")
    check_pair(entry.image, entry.label, image, label)   # a hand-made manifest skipped build
    return image, label


def prepare_volumes(entry: ScanEntry, image: Volume, label: Volume,
                    config: GeneratorConfig) -> PreparedScan:
    """``prepare_scan`` of volumes read with :func:`read_scan`, with the entry's label map."""
    return prepare_scan(entry.scan_id, image.data, label.data, image.info.affine,
                        organ_values=entry.label_map.organ_values(),
                        vessel_values=entry.label_map.vessel, tumor_values=entry.label_map.tumor,
                        config=config)


def load_prepared(entry: ScanEntry, config: GeneratorConfig) -> PreparedScan:
    """Read a scan (:func:`read_scan`) and prepare it."""
    return prepare_volumes(entry, *read_scan(entry), config)
