"""Shared fixtures: tiny hand-made scans, phantom datasets and a local S3 endpoint.

Everything here is simulated: phantoms are synthetic CT, and the S3 endpoint is moto's server on
127.0.0.1, which speaks the real S3 protocol to s3fs and boto3.
"""

from __future__ import annotations

import os
import socket

# One thread per math library in every test process (set before numpy, torch or a subprocess
# starts). ``make test`` runs two pytest workers on two cores, and most slow tests start more
# processes (Ray actors, torchrun ranks, CLI subprocesses): with each library's default pool of
# one thread per core, spinning pools oversubscribe the cores. Measured on a 2-core VM,
# 2026-12-08: the suite took 486 s with the defaults and 425 s with one thread.
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _private_temp_per_worker() -> None:
    """Under pytest-xdist (``make test`` runs two workers) each worker gets its own temporary
    folder, so the Ray clusters that tests start side by side keep their sessions apart: Ray's
    default folder (``$TMPDIR/ray``, with its ``session_latest`` link) and the embedded cluster's
    (``$TMPDIR/tumorforge-<uid>``) would otherwise be shared, and one worker's cluster would read
    the other's session. Short paths: Ray's Unix socket paths must stay under 107 bytes."""
    import tempfile
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return
    base = os.path.join("/tmp", f"tf-{os.getuid()}-{worker}")
    os.makedirs(base, mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = base
    tempfile.tempdir = None                  # gettempdir() reads TMPDIR again


_private_temp_per_worker()


def peak_mib(call) -> tuple[object, float]:
    """(what ``call()`` returned, or the exception it raised; its peak traced allocation in MiB):
    for tests that a reader refuses or reads without allocating what a file merely declares."""
    import tracemalloc
    tracemalloc.start()
    try:
        try:
            out = call()
        except Exception as exc:
            out = exc
        return out, tracemalloc.get_traced_memory()[1] / 2 ** 20
    finally:
        tracemalloc.stop()


def user_error(capsys, argv: list[str]) -> str:
    """Run ``tumorforge ARGV`` in this process expecting a user error: the front door returns
    exit code 2 and its last line of stderr is the message (earlier lines are progress), with no
    traceback. Returns that line."""
    from tumorforge.cluster.front_door import main
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, f"{argv}: exit 2 without a message"
    return lines[-1]


def write_nifti(path, data, affine=None, gz=None):
    """Write ``data`` as NIfTI-1 (gzip if the name ends in .gz); returns the path as str."""
    affine = np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return str(path)


def tiny_scan(shape=(24, 20, 10), tumor=True, seed=0):
    """A small CT-like volume (HU) and a 0/1/2 label: an ellipsoid liver with an optional lesion."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    liver = (i / 0.7) ** 2 + (j / 0.6) ** 2 + (k / 0.9) ** 2 < 1
    image = np.where(liver, 100, -80).astype(np.float32) + rng.normal(0, 10, shape)
    label = liver.astype(np.uint8)
    if tumor:
        lesion = (i - 0.2) ** 2 + j ** 2 + k ** 2 < 0.1
        label[lesion & liver] = 2
        image[lesion & liver] -= 40
    return image.astype(np.int16), label


@pytest.fixture
def tiny_lits(tmp_path):
    """A LiTS-layout folder with three tiny cases (case 2 tumor-free)."""
    root = tmp_path / "lits"
    for n in range(3):
        image, label = tiny_scan(tumor=n != 2, seed=n)
        write_nifti(root / f"volume-{n}.nii", image)
        write_nifti(root / f"segmentation-{n}.nii", label)
    return root


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory):
    """Phantom datasets in all four layouts, small (scale 0.15) so the suite stays fast."""
    from tumorforge.manifests.phantoms import write_layout
    root = tmp_path_factory.mktemp("phantoms")
    cases = {"lits": 4, "msd": 2, "btcv": 2, "chaos": 2}
    written = {layout: write_layout(layout, root / layout, n, seed=7, scale=0.15)
               for layout, n in cases.items()}
    return root, written


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on loopback (simulated object storage) with test credentials in the env."""
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
