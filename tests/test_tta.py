import numpy as np
import pytest
import torch
import torch.nn as nn
import ttach as tta

from ensemble.merge import merge
from ensemble.tta import TTA_MODES, BatchedTTA, tta_transforms


def small_cnn(k=5):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, k)).eval()


@pytest.mark.parametrize("mode", sorted(TTA_MODES))
def test_batched_tta_equals_ttach_wrapper_on_probabilities(mode):
    model = small_cnn()
    x = torch.randn(6, 3, 17, 17)
    ours = torch.from_numpy(merge(BatchedTTA(model, mode)(x).detach().numpy(), "mean"))
    ref_model = nn.Sequential(model, nn.Softmax(dim=1))
    ref = tta.ClassificationTTAWrapper(ref_model, tta_transforms(mode), merge_mode="mean")(x)
    assert torch.allclose(ours.float(), ref, atol=1e-5)


@pytest.mark.parametrize("mode,n", [("none", 1), ("hflip", 2), ("flips", 4), ("d4", 8)])
def test_view_counts(mode, n):
    assert BatchedTTA(small_cnn(), mode)(torch.randn(3, 3, 9, 9)).shape == (n, 3, 5)


@pytest.mark.parametrize("mode", sorted(TTA_MODES))
def test_augment_then_deaugment_is_identity(mode):
    x = torch.randn(2, 3, 8, 8)
    for t in tta_transforms(mode):
        assert torch.equal(t.deaugment_mask(t.augment_image(x)), x)


def test_gmean_of_probabilities_is_never_nan_where_logit_gmean_is():
    logits = torch.tensor([[[-2.0, 1.0, 0.5]], [[-1.0, -3.0, 2.0]]])
    ref = tta.base.Merger("gmean", 2)
    for v in logits:
        ref.append(v)
    assert torch.isnan(ref.result).any()  # ttach's gmean on raw logits
    ours = merge(logits.softmax(-1).numpy(), "gmean")
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours.sum(-1), 1.0, rtol=1e-6)


def test_merges_equal_hand_computed_values():
    p = np.array([[[0.7, 0.2, 0.1]], [[0.1, 0.6, 0.3]], [[0.5, 0.4, 0.1]]])
    np.testing.assert_allclose(merge(p, "mean"), [[1.3 / 3, 1.2 / 3, 0.5 / 3]])
    g = np.array([(0.7 * 0.1 * 0.5) ** (1 / 3), (0.2 * 0.6 * 0.4) ** (1 / 3), (0.1 * 0.3 * 0.1) ** (1 / 3)])
    np.testing.assert_allclose(merge(p, "gmean"), [g / g.sum()])
    assert merge(p, "vote").argmax() == 0  # two of three members vote class 0
    np.testing.assert_allclose(merge(p, "mean", weights=[1, 0, 0]), p[0])


def test_unknown_merge_mode():
    with pytest.raises(ValueError, match="merge mode must be one of"):
        merge(np.ones((1, 1, 2)) / 2, "median")


@pytest.mark.parametrize("mode", ["none", "flips"])
def test_padding_the_last_batch_to_a_fixed_shape_changes_no_prediction(mode):
    """On CUDA the last, smaller batch is padded so cuDNN autotunes one shape; rows must not change."""
    from torch.utils.data import DataLoader, TensorDataset

    from folds.engine import InputPipe, Precision
    from folds.predict import predict_probs

    images = torch.randint(0, 256, (7, 3, 17, 17), dtype=torch.uint8)
    loader = DataLoader(TensorDataset(images), batch_size=4)  # batches of 4 and 3
    prec = Precision.resolve("cpu")
    inputs = InputPipe(prec, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    model = small_cnn()
    model[1].running_mean.fill_(0.3)  # eval-mode BatchNorm with non-trivial statistics
    plain = predict_probs(model, loader, prec, inputs, mode, fixed_shape=False)
    padded = predict_probs(model, loader, prec, inputs, mode, fixed_shape=True)
    assert padded.shape == (7, 5)
    np.testing.assert_allclose(padded, plain, atol=1e-6)
