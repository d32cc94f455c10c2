"""The zarr shard encoder writes, straight through the codecs, the very bytes zarr-python's own
pipeline writes (issue 14: the pipeline cost 4-5x the codec work), for full and partial shards and
with chunks that equal the fill value (not stored)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from tumorforge.manifests.dataset import codecs


@pytest.mark.parametrize("count, per_shard, zero", [(4, 4, None), (3, 4, None), (4, 4, 2)])
def test_direct_zarr_encoding_equals_zarr_python(count, per_shard, zero, tmp_path):
    rng = np.random.default_rng(count + per_shard)
    images = rng.normal(40, 150, (count, 16, 20, 24)).astype(np.int16)
    labels = rng.integers(0, 3, (count, 16, 20, 24)).astype(np.uint8)
    if zero is not None:
        labels[zero] = 0                          # the fill value: zarr stores no chunk for it
    keys = [f"tfabcdef012345_{i:010d}" for i in range(count)]
    prov = ['{"index":%d,"note":"\u00e9"}' % i for i in range(count)]
    args = (7, images, labels, keys, range(7 * per_shard, 7 * per_shard + count), prov, per_shard)
    direct = codecs.zarr_shard_objects(*args)
    assert direct == codecs.zarr_shard_objects_reference(*args)
    # And zarr reads them back as written, in a store of the whole dataset.
    n = 7 * per_shard + count
    root = tmp_path / "dataset"
    for key, data in {**codecs.zarr_metadata(n, per_shard, images.shape[1:], {}),
                      **direct}.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    group = zarr.open_group(str(root / codecs.ZARR_ROOT), mode="r")
    assert np.array_equal(group["image"][7 * per_shard:], images)
    assert np.array_equal(group["label"][7 * per_shard:], labels)
    assert list(group["key"][7 * per_shard:]) == keys
    assert list(group["provenance"][7 * per_shard:]) == prov
