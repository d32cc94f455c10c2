"""Golden hashes: a generator version means one exact output.

Provenance records the generator version, and audit regenerates a sample from its record, so the
bytes a version produces must never change silently. Each case is the sha256 of a 48^3 crop
(image bytes, then label bytes) on the NumPy backend, from a scale-0.25 phantom.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tumorforge.generator import GENERATOR_VERSION
from tumorforge.generator.backend import get_backend
from tumorforge.generator.config import GeneratorConfig
from tumorforge.generator.prepare import prepare_scan
from tumorforge.generator.sample import sample_params, sample_seed
from tumorforge.generator.synthesize import synthesize
from tumorforge.manifests.phantoms import make_phantom

# {generator version: {"profile/size type": sha256}}. Add a version, never edit a recorded one.
GOLDEN = {
    "0.1.0": {
        "paper/tiny": "75a18c16d480322fc2c279a0b8136519f9d52be009d8a272780486de096d769e",
        "paper/medium": "640c5c029ec55ba0a1da3955de1b90f7e1e73dfc6e423f5ca0a990706fdb5042",
        "paper/large": "498599f65adecc01cc6704437665d334eaa85204e9bd4ee7b4e29bac382b1720",
        "paper/mix": "c59b83086dc0c05b4e227fdd8d0856d8d40ed91be7d63f106fe43dcd2ec38631",
        "released/small": "90ede15719dcef40014dbada73c7dd9ab50b12b3d7bb2444018b5a47df3eac5a",
        "released/large": "b933c76e6e493c67c01441cd8c5b1745bf2a4311fec36c4e11fd3ad79f910b23",
    },
    # 0.2.0: paper-train profile; location tests the drawn shape; texture standardized to sigma_p;
    # released twin (union mask, pos-neg crops: released/small is a background-centred crop).
    "0.2.0": {
        "paper-train/tiny": "9909fe022c65f17465ecf1a02704091bbf8f14121888677061134c3ec11eb86d",
        "paper-train/mix": "d125ac243be7a23ef72f1b93f74d07f3f8ba3e43e019356da3c21bb6cf18a3e8",
        "paper/tiny": "97f2ea58f0661962b3fbd0c6cce74ff79c921ceebea637ef8eb9ce4e4082f337",
        "paper/medium": "86a6be7fbb93d62efd45a3e3cd319d93013c41dadb70125b67021581956fc519",
        "paper/large": "1c22cee8482d0008b38420b5e24210beb0e276c2dcce671b307177fc0415ac34",
        "paper/mix": "571a0982bb9b04b0b370ebfffd694c03dc7889528f3a93db3b5d98b439a21e08",
        "released/small": "3e9df0771567c9a89d01fafa403cb60184f5ab04990169be5b6d33a97f634b59",
        "released/large": "565b86c068e053479dcd351fdb70f97fadf597d5301f165c1a54fca7855d7485",
    },
}
# 0.3.0: the real profile follows the crop policy (pos-neg) and the plan gives it healthy scans
# for negatives; the synthetic profiles did not change (same hashes).
GOLDEN["0.3.0"] = GOLDEN["0.2.0"]
# 0.4.0: the paper texture's cubic upscaling is evaluated as three separable passes instead of
# ndimage.zoom: the same upscaled texture up to one float32 ulp (22 of 300 random boxes differ, by
# <= 2.4e-7), so a rare voxel may round to another HU; these crops are byte-identical.
GOLDEN["0.4.0"] = GOLDEN["0.3.0"]
# 0.5.0 (issue 16): location rules tested on the ellipsoid in 16 boxes with summed-area tables
# and every tumor of a size class drawn together (new draws); boxes from the records alone (tumor
# box from the control grid's largest displacement; a tumor painted on its part in the crop);
# the paper texture as one matrix per axis with analytic unit variance; normals from Philox in
# Box-Muller pairs.
GOLDEN["0.5.0"] = {
    "paper-train/tiny": "df0478896d8206e57f33e65d945771d2a9aaf3a798a5259f2238217b2c5d76d4",
    "paper-train/mix": "a0c4def298e635d233275dee7d860fff130dd58e852ae71db2f286e50710ad97",
    "paper/tiny": "f79a8bd2fe2bbc2952150263888b04e39b3bb83126093f3a96fc31e2e421998d",
    "paper/medium": "b3383f5c45d4bdfe15128a23a723f9ecc44010c0e6181be2c28d45870cf44628",
    "paper/large": "4de118b41d421dea6925073d82a9e8e5f8da60bbb4c8841c4493c9a88a6b9578",
    "paper/mix": "005f995f4cf117a3a7872d19a20e92231f182c87662474ad1e51dde8709d7f64",
    "released/small": "3e9df0771567c9a89d01fafa403cb60184f5ab04990169be5b6d33a97f634b59",
    "released/large": "3ad58d15bf091e775896d6f9eef4a012c94f2273e15653dfa0c7d2f34e331a8e",
}
# 0.6.0 (issue 28): the released twin reads its ellipsoid as a mask of the integer grid (q < 1) at
# each deformed voxel's nearest grid point, and scales its texture to the drawn mean over the
# voxels above 0.12; paper-grain (the scan-matched texture) is new. The paper profiles' bytes did
# not change (same hashes); released/small is a background-centred crop without a tumor.
GOLDEN["0.6.0"] = {
    **GOLDEN["0.5.0"],
    "released/large": "027cfeeec62bcc40a8fbe01e438c3af4ea13eddd3979f78067ccb20d8eecc2c5",
    "released/tiny": "32f193bd31edef422d376b543c7e0a1e0d1249bc325483e66d06a1b3232a6b6b",
    "paper-grain/medium": "08490486d553d79bf7a5c2126a62be32b036a0538b99e532a816b73581878252",
}
# 0.7.0 (issue 28): released textures are windows of a bank of ten volumes (one per noise-blur and
# salt-blur pair), as the authors' code keeps them, at an offset drawn from the sample's texture
# seed, instead of a fresh field per sample. The paper profiles' bytes did not change.
GOLDEN["0.7.0"] = {
    **GOLDEN["0.6.0"],
    "released/large": "45cf65defac62f56c469e7d832b5d51a039f46f337179a74f03402e0a2c6288c",
    "released/tiny": "c21555378d4ba9e97baa56c80a5b9115248d95132e996dbe55438490f0e30cc7",
}
CASES = ("paper-train/tiny", "paper-train/mix", "paper/tiny", "paper/medium", "paper/large",
         "paper/mix", "released/small", "released/large", "released/tiny", "paper-grain/medium")


def _config(profile: str, size: str) -> GeneratorConfig:
    return GeneratorConfig(profile=profile, crop_size=(48, 48, 48), size_mix={size: 1.0},
                           negative_fraction=0.0)


@pytest.fixture(scope="module")
def scan():
    # One preparation serves both profiles: prepare_scan reads the spacing, the crop size and the
    # paper's vessel parameters, never the profile (and it is most of this file's run time).
    phantom = make_phantom(np.random.default_rng(3), scale=0.25)
    return prepare_scan("golden", phantom.image, phantom.organs, phantom.affine, organ_values=(6,),
                        config=_config("paper", "mix"))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_generator_output_is_pinned_to_its_version(scan, case):
    profile, size = case.split("/")
    config = _config(profile, size)
    params = sample_params(np.random.default_rng(sample_seed(11, 0)), scan, config)
    crop = synthesize(scan, params, get_backend("numpy"))
    digest = hashlib.sha256(crop.image.tobytes() + crop.label.tobytes()).hexdigest()
    recorded = GOLDEN.get(GENERATOR_VERSION)
    assert recorded is not None, (
        f"no golden hashes for generator version {GENERATOR_VERSION}: when generator output "
        f"changes, bump tumorforge.generator.GENERATOR_VERSION and record the new hashes under it "
        f"in GOLDEN of {__file__} ({case}: {digest})")
    assert case in recorded, f"no golden hash for {case} in version {GENERATOR_VERSION} ({digest})"
    assert digest == recorded[case], (
        f"generator output changed for {case} (sha256 {digest}, recorded {recorded[case]} for "
        f"version {GENERATOR_VERSION}): bump tumorforge.generator.GENERATOR_VERSION and record the "
        f"new hashes under the new version in GOLDEN of {__file__}")
