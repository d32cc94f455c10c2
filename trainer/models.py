"""Segmentation networks by name (MONAI), with one output channel per class of the organ's record
(background, the organ, tumor), as the training data's ``Preprocessing.class_names`` give them."""

from __future__ import annotations

# torch is imported where a model is built, so command-line parsers can list MODELS cheaply.
MODELS = ("unet", "unet-small", "swinunetr-tiny", "swinunetr-small", "swinunetr-base")
SWIN_FEATURES = {"swinunetr-tiny": 12, "swinunetr-small": 24, "swinunetr-base": 48}


def build_model(name: str, classes: int) -> "torch.nn.Module":
    """``unet``: the paper's U-Net (channels 16-256, strides 2, two residual units per level);
    ``unet-small``: the same at half the width with one residual unit (CPU experiments);
    ``swinunetr-*``: Swin UNETR with feature size 12 / 24 / 48. Input: one channel; output: ``classes`` channels; crops whose
    sides are multiples of 32 for Swin UNETR and of 16 for the U-Net."""
    from monai.networks.nets import UNet
    if name == "unet":
        return UNet(spatial_dims=3, in_channels=1, out_channels=classes,
                    channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    if name == "unet-small":      # half the width, one residual unit: for CPU experiments
        return UNet(spatial_dims=3, in_channels=1, out_channels=classes,
                    channels=(8, 16, 32, 64, 128), strides=(2, 2, 2, 2), num_res_units=1)
    if name in SWIN_FEATURES:
        from monai.networks.nets import SwinUNETR
        return SwinUNETR(in_channels=1, out_channels=classes, feature_size=SWIN_FEATURES[name],
                         spatial_dims=3)
    raise ValueError(f"model {name!r}: expected one of {MODELS}")
