"""Train your own MONAI model on healthy scans with tumors painted on the fly by
``TumorSynthesisd`` (instead of the authors' ``TumorGenerated``), without any tumorforge dataset.

    python cluster/examples/monai_transform_training.py MANIFEST.jsonl --steps 200

MANIFEST is a tumorforge scan manifest (``tumorforge manifest build``): its image and label paths
and each scan's liver label values are used; nothing else of tumorforge is. Everything below is
plain MONAI and torch, which is the point: copy it into your own training code.
"""

from __future__ import annotations

import argparse

import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import (Compose, EnsureChannelFirstd, LoadImaged, Orientationd,
                              RandCropByPosNegLabeld, ScaleIntensityRanged, Spacingd)

from tumorforge.generator import TumorSynthesisd
from tumorforge.manifests.schema import default_roots, read_manifest


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--spacing", type=float, default=2.0, help="mm (the paper: 1)")
    ap.add_argument("--crop", type=int, default=64, help="voxels (the paper: 96)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-root", action="append", default=[],
                    help="a folder the scans may lie in besides the manifest's own (repeatable)")
    args = ap.parse_args(argv)
    scans = read_manifest(args.manifest, default_roots(args.manifest, args.allow_root))
    liver = sorted({v for e in scans for v in e.label_map.organ})
    keys = ("image", "label")
    train = Compose([
        LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, pixdim=(args.spacing,) * 3, mode=("bilinear", "nearest")),
        # Tumors painted into the healthy liver; labels become 0 background, 1 liver, 2 tumor.
        TumorSynthesisd(keys, profile="paper", prob=0.9, liver_values=liver, tumor_values=(),
                        config={"target_spacing_mm": [args.spacing] * 3,
                                "crop_size": [args.crop] * 3}),
        ScaleIntensityRanged("image", a_min=-21, a_max=189, b_min=0.0, b_max=1.0, clip=True),
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=(args.crop,) * 3, pos=1,
                               neg=1, num_samples=2),
    ])
    train.set_random_state(args.seed)
    torch.manual_seed(args.seed)         # MONAI's DataLoader seeds the transforms from torch's RNG
    loader = DataLoader(Dataset([{"image": e.image, "label": e.label} for e in scans],
                                transform=train), batch_size=1, shuffle=True, num_workers=0)
    model = UNet(3, 1, 3, channels=(8, 16, 32, 64), strides=(2, 2, 2))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step = 0
    while step < args.steps:
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(model(batch["image"].float()), batch["label"].long())
            loss.backward()
            opt.step()
            step += 1
            tumor = int((batch["label"] == 2).sum())
            print(f"step {step} loss {loss.item():.4f} tumor voxels in batch {tumor}")
            if step >= args.steps:
                break


if __name__ == "__main__":
    main()
