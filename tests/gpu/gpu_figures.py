"""GPU figures for issue 17, run by ``tests/gpu/device_check.sh`` on a GPU machine.

    python tests/gpu/gpu_figures.py parity MANIFEST OUT.json [--samples N]
    python tests/gpu/gpu_figures.py transform OUT.json

``parity``: the same records synthesized on NumPy and CuPy, per profile and size type: tumor-label
Dice, mean and largest |dHU| over the crop, and whether every crop is within the audit tolerance
(``cluster.audit``); plus GPU determinism (a second GPU run gives the same bytes).
``transform``: ``TumorSynthesisd`` on a sample whose tensors live on the GPU (its CuPy branch),
replayed from its record on the CPU; skipped with a reason when MONAI or torch is missing.

Needs only NumPy, SciPy, CuPy, nibabel and tumorforge's own code (no Ray, MONAI for ``parity``).
"""

from __future__ import annotations

import json
import sys
import time


def parity(manifest: str, out: str, samples: int = 4) -> dict:
    import numpy as np
    from tumorforge.cluster.audit import (CROSS_BACKEND_MEAN_ABS_HU_MAX,
                                          CROSS_BACKEND_TUMOR_DICE_MIN, agreement)
    from tumorforge.generator.backend import get_backend
    from tumorforge.generator.config import GeneratorConfig
    from tumorforge.generator.sample import sample_params, sample_seed
    from tumorforge.generator.scans import load_prepared
    from tumorforge.generator.synthesize import synthesize
    from tumorforge.manifests.schema import default_roots, read_manifest
    import os
    # TUMORFORGE_CHECK_BACKEND=numpy rehearses the script on a CPU machine (figures meaningless).
    cpu, gpu = get_backend("numpy"), get_backend(os.environ.get("TUMORFORGE_CHECK_BACKEND",
                                                                "cupy"))
    entry = read_manifest(manifest, default_roots(manifest, ()))[0]
    rows, worst = [], {"tumor_dice": 1.0, "mean_abs_hu": 0.0, "max_abs_hu": 0.0}
    deterministic = True
    for profile, kernels, precision in (
            ("paper-train", "auto", "float64"), ("paper-train", "auto", "float32"),
            ("paper-train", "off", ""), ("paper", "auto", "float64"), ("paper", "off", ""),
            ("released", "auto", "")):
        os.environ["TUMORFORGE_KERNEL_NOISE"] = precision or "float64"
        config = GeneratorConfig(profile=profile)
        scan = load_prepared(entry, config)
        for size in ("tiny", "small", "medium", "large", "mix"):
            config = GeneratorConfig(profile=profile, size_mix={size: 1.0}, negative_fraction=0.0)
            dice, mae, top, ok = [], [], [], True
            for i in range(samples):
                p = sample_params(np.random.default_rng(sample_seed(17, i)), scan, config)
                a, b = synthesize(scan, p, cpu), synthesize(scan, p, gpu, kernels=kernels)
                check = agreement(a.image, a.label, b.image, b.label)
                dice.append(check["tumor_dice"])
                mae.append(check["mean_abs_hu"])
                top.append(float(np.abs(a.image.astype(np.int32) - b.image).max()))
                ok &= check["within_tolerance"]
                again = synthesize(scan, p, gpu, kernels=kernels)
                deterministic &= (again.image.tobytes() == b.image.tobytes()
                                  and again.label.tobytes() == b.label.tobytes())
            # kernels auto: the fused kernels where they apply (generator/kernels), off: the
            # array code on CuPy alone
            rows.append({"profile": profile, "size": size, "kernels": kernels,
                         "noise": precision, "crops": samples,
                         "tumor_dice_min": round(min(dice), 5),
                         "mean_abs_hu_max": round(max(mae), 4),
                         "max_abs_hu": max(top), "within_tolerance": bool(ok)})
            worst = {"tumor_dice": min(worst["tumor_dice"], min(dice)),
                     "mean_abs_hu": max(worst["mean_abs_hu"], max(mae)),
                     "max_abs_hu": max(worst["max_abs_hu"], max(top))}
            print(json.dumps(rows[-1]), flush=True)
    report = {"tolerance": {"tumor_dice_min": CROSS_BACKEND_TUMOR_DICE_MIN,
                            "mean_abs_hu_max": CROSS_BACKEND_MEAN_ABS_HU_MAX},
              "rows": rows, "worst": worst, "gpu_deterministic": bool(deterministic),
              "summary": f"worst tumor Dice {worst['tumor_dice']:.5f}, worst mean |dHU| "
                         f"{worst['mean_abs_hu']:.4f}, largest |dHU| {worst['max_abs_hu']:.0f}; "
                         f"all within tolerance: {all(r['within_tolerance'] for r in rows)}; "
                         f"GPU deterministic: {deterministic}"}
    os.environ.pop("TUMORFORGE_KERNEL_NOISE", None)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(report["summary"])
    return report


def transform(out: str) -> dict:
    try:
        import torch
        from monai.data import MetaTensor
        from tumorforge.generator import TumorSynthesisd
    except Exception as exc:                      # MONAI or torch not carried: say so
        report = {"skipped": f"{type(exc).__name__}: {exc}"}
    else:
        import numpy as np
        if not torch.cuda.is_available():
            report = {"skipped": "torch sees no CUDA device"}
        else:
            from tumorforge.manifests.phantoms import make_phantom
            ph = make_phantom(np.random.default_rng(0), scale=0.3)
            liver = (ph.organs == 6).astype(np.float32)
            image = MetaTensor(torch.as_tensor(ph.image[None].astype(np.float32)),
                               affine=torch.as_tensor(ph.affine))
            label = MetaTensor(torch.as_tensor(liver[None]), affine=torch.as_tensor(ph.affine))
            data = {"image": image.cuda(), "label": label.cuda()}
            t = TumorSynthesisd(keys=("image", "label"), prob=1.0)
            t.set_random_state(3)
            t0 = time.perf_counter()
            made = t(data)
            seconds = time.perf_counter() - t0
            report = {"device": str(made["image"].device),
                      "tumor_voxels": int((made["label"] == 2).sum().item()),
                      "seconds": round(seconds, 3),
                      "record": "tumor_synthesis" in made["image"].meta}
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report))
    return report


def main(argv: list[str]) -> int:
    if argv[:1] == ["parity"] and len(argv) >= 3:
        n = int(argv[argv.index("--samples") + 1]) if "--samples" in argv else 4
        parity(argv[1], argv[2], n)
        return 0
    if argv[:1] == ["transform"] and len(argv) >= 2:
        transform(argv[1])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
