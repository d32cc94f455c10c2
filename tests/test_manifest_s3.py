"""Manifests over object storage, against moto's S3 server on 127.0.0.1 (a simulated endpoint)."""

from __future__ import annotations

import boto3
import pytest

from tumorforge.cluster.front_door import main
from tumorforge.manifests.readers import read_volume
from tumorforge.manifests.schema import ManifestError, read_manifest, default_roots


@pytest.fixture
def bucket(s3_server, tiny_lits):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    name = "scans"
    s3.create_bucket(Bucket=name)
    for path in sorted(tiny_lits.iterdir()):
        s3.upload_file(str(path), name, f"lits/{path.name}")
    yield name
    for obj in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=obj["Key"])
    s3.delete_bucket(Bucket=name)


def test_build_validate_and_read_from_s3(bucket, tiny_lits, tmp_path, capsys):
    manifest = f"s3://{bucket}/manifests/lits.jsonl"
    root = f"s3://{bucket}/lits"
    assert main(["manifest", "build", "--layout", "lits", root, "-o", manifest]) == 0
    # The manifest lives beside, not above, the scans: its folder alone does not allow them.
    with pytest.raises(ManifestError, match="outside the allowed roots"):
        read_manifest(manifest)
    entries = read_manifest(manifest, default_roots(manifest, [root]))
    assert [e.image for e in entries] == [f"{root}/volume-{n}.nii" for n in range(3)]
    assert [e.role for e in entries] == ["tumor", "tumor", "healthy"]

    local = tmp_path / "copy.jsonl"
    main(["manifest", "build", "--layout", "lits", str(tiny_lits), "-o", str(local)])
    local_entries = read_manifest(str(local))
    assert [e.sha256 for e in entries] == [e.sha256 for e in local_entries]

    assert main(["manifest", "validate", manifest, "--allow-root", root]) == 0
    vol = read_volume(entries[0].image)
    assert vol.info.shape == (24, 20, 10) and vol.sha256 == entries[0].sha256["image"]


def test_s3_prefix_confinement(bucket):
    from tumorforge.manifests.storage import AllowedRoots, PathEscapeError
    roots = AllowedRoots.of([f"s3://{bucket}/lits"])
    assert roots.check(f"s3://{bucket}/lits/volume-0.nii") == f"s3://{bucket}/lits/volume-0.nii"
    for bad in (f"s3://{bucket}/lits-other/x.nii", f"s3://{bucket}/lits/../secret.nii",
                "s3://other-bucket/lits/x.nii", "/etc/passwd"):
        with pytest.raises(PathEscapeError):
            roots.check(bad)
