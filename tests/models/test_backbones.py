from pathlib import Path

import pytest
import timm
import torch

from bcc_lightning.models.backbones import build_backbone, resolve_name
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.models.optim import build_optimizer, build_scheduler
from bcc_lightning.utils.errors import UserError

OPT = {"name": "adam", "lr": 1e-3}


@pytest.mark.parametrize(("name", "size", "mean"), [("mobilenetv2", 64, 0.485), ("densenet121", 64, 0.485),
                                                     ("inceptionv3", 75, 0.5)])
def test_forward_backward_each_backbone(name: str, size: int, mean: float) -> None:
    torch.manual_seed(0)
    model = BCCClassifier({"name": name, "img_size": size, "hidden": 16, "dropout": 0.1}, OPT)
    assert model.preprocess.img_size == size and model.preprocess.mean[0] == pytest.approx(mean)
    x = torch.randn(2, 3, size, size)
    logits = model(x)
    assert logits.shape == (2,)
    loss = model.loss_fn(logits, torch.tensor([0.0, 1.0]))
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert model.backbone.num_features > 0


def test_native_sizes_come_from_the_weights() -> None:
    assert BCCClassifier({"name": "inceptionv3"}, OPT, load_weights=False).preprocess.img_size == 299
    assert BCCClassifier({"name": "mobilenetv2"}, OPT, load_weights=False).preprocess.img_size == 224


def test_any_timm_model_and_unknown_names() -> None:
    model = BCCClassifier({"name": "resnet10t", "img_size": 64}, OPT)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2,)
    with pytest.raises(UserError, match="Close matches: densenet121"):
        resolve_name("densnet121")


def test_too_small_image_is_refused() -> None:
    with pytest.raises(UserError, match="at least 75"):
        BCCClassifier({"name": "inceptionv3", "img_size": 64}, OPT)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_local_weights_are_loaded(tmp_path: Path, fmt: str) -> None:
    torch.manual_seed(1)
    source = timm.create_model("mobilenetv2_100", num_classes=1000)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # as saved from DataParallel
    path = tmp_path / f"w.{fmt}"
    if fmt == "pth":
        torch.save({"state_dict": state}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    backbone = build_backbone("mobilenetv2", pretrained=True, weights=str(path))
    own = backbone.state_dict()
    for key, value in source.state_dict().items():
        if key in own:
            assert torch.equal(own[key], value), key
    assert "classifier.weight" not in own  # ImageNet head dropped


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    torch.save(timm.create_model("resnet10t").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(UserError, match="does not fit the backbone 'mobilenetv2_100'"):
        build_backbone("mobilenetv2", pretrained=True, weights=str(tmp_path / "resnet.pth"))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Path("/")}, tmp_path / "p.pth")
    with pytest.raises(UserError, match="refused for safety|Cannot read"):
        build_backbone("mobilenetv2", weights=str(tmp_path / "p.pth"))


def test_offline_pretrained_explains_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match="model.weights=PATH.*model.pretrained=false"):
        build_backbone("densenet121", pretrained=True)


def test_optimizers_and_schedulers() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(build_optimizer(params, {"name": "rmsprop", "lr": 1e-5, "alpha": 0.9}), torch.optim.RMSprop)
    with pytest.raises(UserError, match="Unknown optimizer"):
        build_optimizer(params, {"name": "adagrad", "lr": 1e-3})
    with pytest.raises(UserError, match="Bad option"):
        build_optimizer(params, {"name": "adam", "lr": 1e-3, "alpha": 0.9})
    opt = build_optimizer(params, OPT)
    sched = build_scheduler(opt, {"name": "cosine", "warmup_epochs": 1}, max_epochs=5)["scheduler"]
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[1] and lrs[1] > lrs[-1]


def test_uint8_pixels_are_normalised_by_the_model(tmp_path: Path) -> None:
    """Loaders, predict and Grad-CAM ship uint8 pixels; the model normalises them exactly as torchvision would."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import v2

    from bcc_lightning.data.preprocess import decode_resized

    path = tmp_path / "cell.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    torch.manual_seed(0)
    model = BCCClassifier({"name": "resnet10t", "img_size": 32}, OPT).eval()
    pixels = decode_resized(path, model.preprocess)
    assert pixels.dtype == torch.uint8
    pre = model.preprocess
    floats = v2.Normalize(list(pre.mean), list(pre.std))(v2.ToDtype(torch.float32, scale=True)(pixels))
    with torch.no_grad():
        torch.testing.assert_close(model(pixels[None]), model(floats[None]), atol=1e-4, rtol=1e-4)
    assert not any("normalise" in key for key in model.state_dict())  # derived from preprocess: no new keys


def test_normalisation_uses_given_mean_std() -> None:
    model = BCCClassifier({"name": "resnet10t", "img_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3}, OPT)
    tensor = model.normalise(torch.full((1, 3, 10, 10), 128, dtype=torch.uint8))
    assert torch.allclose(tensor, torch.full_like(tensor, (128 / 255 - 0.5) / 0.25), atol=1e-5)


def test_bf16_autocast_keeps_fp32_probabilities() -> None:
    """Head and sigmoid run in fp32 under bf16 autocast: probabilities keep their resolution (a bf16 sigmoid
    would collapse 256 inputs onto a few dozen values)."""
    from bcc_lightning.models.inference import predict_batches

    torch.manual_seed(0)
    model = BCCClassifier({"name": "resnet10t", "img_size": 32, "hidden": 0, "dropout": 0.0}, OPT)
    x = torch.randn(256, 3, 32, 32)
    probs = predict_batches(model, [x[:128], x[128:]], torch.device("cpu"), "bf16-mixed")
    assert probs.dtype in (torch.float32, torch.float64) and len(torch.unique(probs)) >= 200
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x[:4]).dtype == torch.float32


# A backbone family kept outside the package: one file, selected by model.source=<module>:<family>.
TOY_FAMILY = '''
from torch import nn

from bcc_lightning.models.backbones import BackboneFamily, register_family


@register_family("toy")
class ToyFamily(BackboneFamily):
    def data_config(self, name, options):
        return {"input_size": (3, 40, 40), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                "interpolation": "bilinear"}

    def build(self, name, use_hub, options):
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        net.num_features = 8
        return net, "toy_cnn"

    def cam_layer(self, backbone, arch):
        return "0"
'''


def test_a_family_in_one_file_trains_from_the_config_and_rebuilds_from_its_checkpoint(
        demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from bcc_lightning.models import backbones
    from bcc_lightning.models.checkpoint import load_checkpoint
    from bcc_lightning.tasks import train as training
    from tests.conftest import run_in, tiny_train_config

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_backbones.py").write_text(TOY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    monkeypatch.setattr(backbones.registry, "FAMILIES", dict(backbones.FAMILIES))  # the registration stays here
    cfg = tiny_train_config(demo_root, ["model.source=toy_backbones:toy", "model.name=toy", "model.img_size=null",
                                        "report.cam_per_group=1"])
    run_in(tmp_path / "run", training.run, cfg)
    ckpt = sorted((tmp_path / "run").rglob("last.ckpt"))[0]
    model = load_checkpoint(ckpt)
    assert model.backbone_arch == "toy" and model.preprocess.img_size == 40 and model.preprocess.std[0] == 0.25
    assert backbones.default_cam_layer(model.backbone, model.backbone_arch) == "0"
    # A fresh process: the family is imported again from the name the checkpoint recorded (model.source).
    backbones.registry.FAMILIES.pop("toy")
    sys.modules.pop("toy_backbones")
    again = load_checkpoint(ckpt)
    x = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), again.eval()(x))
    with pytest.raises(UserError, match="registers no family 'nope'"):
        backbones.get_family("toy_backbones:nope")
    with pytest.raises(UserError, match="not a backbone family. Registered: .*hf-hub, timm, torchvision"):
        backbones.get_family("tim")
