"""Albumentations pipelines for training and prediction.

Train crops are at the scale of the test images: Dacon's test images are half-width,
half-height crops of unseen paintings, so a crop of about a quarter of the area (side
0.4-0.6 of the painting) shows the model brushwork at the scale it is scored on.
"""
from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from common import UserError

# A test image is half the width and half the height of its painting (Dacon's, and the crop OOF's boxes).
CROP_SIDE = 0.5

# The one registry of --crop names: name -> (resize the whole painting first?, RandomResizedCrop area scale
# of a whole painting).
CROPS = {
    # quarter-area crops: side 0.4-0.6 of the painting, as in the half-by-half test crops
    "test-scale": (False, (0.16, 0.36)),
    # the seed recipe: resize the whole painting, then torchvision's default-scale random crop
    "whole": (True, (0.08, 1.0)),
}


# The shift-scale-rotate augmentation, stated once for both places it can run (--affine):
# "loader" (albumentations Affine, per image in the loader workers) or "device" (one grid_sample
# per batch on the device: folds.recipe.DeviceAffine). On few CPU cores the loader's affine is
# its largest per-image cost (benchmarks/RESULTS.md).
AFFINE = {"translate": (-0.0625, 0.0625), "scale": (0.9, 1.1), "rotate": (-45, 45), "p": 0.5}
AFFINE_ON = ("loader", "device")


def _to_tensor(mean, std, cpu_normalize: bool) -> list:
    # Default: uint8 CHW tensors; the GPU normalises (folds.engine.InputPipe). That moves a
    # quarter of the bytes and takes the float work off the loader's CPU cores.
    return ([A.Normalize(mean=mean, std=std)] if cpu_normalize else []) + [ToTensorV2()]


def crop_scale(scale: tuple[float, float], of_test_crop: bool) -> tuple[float, float]:
    """A RandomResizedCrop area scale, for a whole painting or for an image that already is a test crop
    (a pseudo-labelled test crop, or a crop OOF box). The latter is a quarter of its painting, so the
    same painting-scale crop is four times its area (at most all of it): test-scale crops of a test
    crop take 64-100% of it. Cropping it again at the painting's scale would train on a sixteenth of
    the painting, blown up, a scale the test never shows."""
    return tuple(min(1.0, s / CROP_SIDE ** 2) for s in scale) if of_test_crop else scale


def train_transform(img_size: int, mean, std, crop: str = "test-scale", seed: int | None = None,
                    cpu_normalize: bool = False, affine: str = "loader", of_test_crop: bool = False) -> A.Compose:
    """Random crop + flips + shift-scale-rotate (``AFFINE``; left to the device when ``affine`` is
    "device"), each augmentation at p=0.5; uint8 CHW out. ``of_test_crop``: for images that already
    are test-size crops of a painting (``crop_scale``)."""
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {sorted(CROPS)}, got {crop!r}")
    if affine not in AFFINE_ON:
        raise ValueError(f"affine must be one of {AFFINE_ON}, got {affine!r}")
    resize_first, scale = CROPS[crop]
    scale = crop_scale(scale, of_test_crop)
    pre = [A.Resize(img_size, img_size)] if resize_first else []
    shift_scale_rotate = [A.Affine(translate_percent=AFFINE["translate"], scale=AFFINE["scale"],
                                   rotate=AFFINE["rotate"], border_mode=cv2.BORDER_REFLECT_101, p=AFFINE["p"])]
    return A.Compose(
        pre + [
            A.RandomResizedCrop(size=(img_size, img_size), scale=scale, ratio=(3 / 4, 4 / 3),
                                interpolation=cv2.INTER_AREA, p=1.0),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
        ] + (shift_scale_rotate if affine == "loader" else []) + _to_tensor(mean, std, cpu_normalize),
        seed=seed,
    )


def check_installed(crop: str, affine: str) -> None:
    """The installed albumentations builds this run's pipelines, or a UserError that names its version, before
    anything is written. An older one (a notebook image's 1.3) failed with a TypeError when the first fold built
    its transforms, after the run folder was written."""
    try:
        for of_test_crop in (False, True):
            train_transform(32, (0.5,) * 3, (0.5,) * 3, crop, seed=0, affine=affine, of_test_crop=of_test_crop)
        eval_transform(32, (0.5,) * 3, (0.5,) * 3)
    except (TypeError, ValueError, AttributeError) as e:
        raise UserError(f"albumentations {A.__version__} cannot build this suite's augmentations ({type(e).__name__}: "
                        f"{e}). Install the version requirements.txt names: pip install -r requirements.txt (offline: "
                        "its wheels, as ensemble/export.py gathers them).") from None


def eval_transform(img_size: int, mean, std, cpu_normalize: bool = False) -> A.Compose:
    """Resize to the model's size (deterministic); uint8 CHW out."""
    return A.Compose([A.Resize(img_size, img_size, interpolation=cv2.INTER_AREA)]
                     + _to_tensor(mean, std, cpu_normalize))
