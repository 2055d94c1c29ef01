"""The inference fast path (ONNX Runtime): off for a few images under auto, eager's numbers when on, eager again
when it cannot run, and its config key checked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from bcc_lightning.models import inference
from bcc_lightning.models.inference import (
    FAST_AUTO_MIN_IMAGES,
    OnnxRunner,
    parse_fast,
    predict_view_logits,
    want_fast,
)
from bcc_lightning.models.module import BCCClassifier
from bcc_lightning.utils.config import check_config
from bcc_lightning.utils.errors import UserError
from tests.conftest import compose_config, write_image

CPU = torch.device("cpu")
SIZE = 32
# The fast path is fp32, as eager fp32: only float rounding may differ (measured ~1e-7 on real backbones).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model() -> BCCClassifier:
    torch.manual_seed(0)
    return BCCClassifier({"name": "test_efficientnet", "pretrained": False, "img_size": SIZE, "dropout": 0.0},
                         {"name": "adam", "lr": 1e-3}, load_weights=False).eval()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_auto_stays_off_for_a_handful_of_images(model: BCCClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not want_fast("auto", 5, CPU) and not want_fast("auto", None, CPU)
    assert want_fast("auto", FAST_AUTO_MIN_IMAGES, CPU) and want_fast(True, 1, CPU) and not want_fast(False, 10**6, CPU)
    assert not want_fast(True, 10**6, torch.device("cuda"))  # ONNX Runtime here is the CPU's; a GPU stays eager

    def refuse(_: object) -> None:
        raise AssertionError("the fast path must not be built for a handful of images")

    monkeypatch.setattr(inference, "fast_runner", refuse)
    assert predict_view_logits(model, [pixels(4)], CPU, "32-true", fast="auto", n_images=4).shape == (4, 1)
    # TTA counts 8 forward images per image
    assert want_fast("auto", FAST_AUTO_MIN_IMAGES // 8 * 8, CPU)


@pytest.mark.parametrize("tta", [False, True])
def test_fast_path_gives_eagers_probabilities(model: BCCClassifier, tta: bool) -> None:
    batches = [pixels(6, 1), pixels(3, 2)]  # a partial last batch: the session takes any batch size
    eager = predict_view_logits(model, batches, CPU, "32-true", tta=tta)
    fast = predict_view_logits(model, batches, CPU, "bf16-mixed", tta=tta, fast=True)
    assert fast.shape == eager.shape == (9, 8 if tta else 1)
    assert isinstance(inference._RUNNERS[model][1], OnnxRunner)  # the fast path really ran
    torch.testing.assert_close(fast, eager, atol=TOLERANCE, rtol=TOLERANCE)
    torch.testing.assert_close(torch.sigmoid(fast), torch.sigmoid(eager), atol=TOLERANCE, rtol=0)


def test_session_is_cached_and_rebuilt_when_the_weights_change(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    net = BCCClassifier({"name": "test_efficientnet", "pretrained": False, "img_size": SIZE},
                        {"name": "adam", "lr": 1e-3}, load_weights=False).eval()
    first = inference.fast_runner(net)
    assert first is not None and inference.fast_runner(net) is first
    with torch.no_grad():
        next(net.head.parameters()).add_(1.0)  # in place, as an optimizer step: same tensor, new version
    second = inference.fast_runner(net)
    assert second is not None and second is not first
    eager = predict_view_logits(net, [pixels(2)], CPU, "32-true")
    torch.testing.assert_close(predict_view_logits(net, [pixels(2)], CPU, "32-true", fast=True), eager,
                               atol=TOLERANCE, rtol=TOLERANCE)


def test_a_failing_backend_logs_and_falls_back_to_eager(model: BCCClassifier, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    batches = [pixels(4, 3)]
    eager = predict_view_logits(model, batches, CPU, "32-true")

    def no_session(*args: object, **kwargs: object) -> None:
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setattr(inference, "_RUNNERS", type(inference._RUNNERS)())
    monkeypatch.setattr(OnnxRunner, "__init__", no_session)
    with caplog.at_level(logging.WARNING, logger="bcc_lightning"):
        out = predict_view_logits(model, batches, CPU, "32-true", fast=True)
    assert torch.equal(out, eager)
    assert "fast path unavailable (ImportError: No module named 'onnxruntime'); using the eager model" in caplog.text

    # built, then failing on a batch (an operator ONNX Runtime rejects at run time)
    monkeypatch.undo()
    monkeypatch.setattr(inference, "_RUNNERS", type(inference._RUNNERS)())

    def broken(self: OnnxRunner, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("ONNXRuntimeError: NOT_IMPLEMENTED")

    monkeypatch.setattr(OnnxRunner, "__call__", broken)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bcc_lightning"):
        out = predict_view_logits(model, batches + batches, CPU, "32-true", fast=True)
    torch.testing.assert_close(out, torch.cat([eager, eager]))
    assert caplog.text.count("fast path failed (RuntimeError: ONNXRuntimeError: NOT_IMPLEMENTED)") == 1


def test_normalised_float_batches_run_eagerly(model: BCCClassifier) -> None:
    floats = torch.randn(3, 3, SIZE, SIZE)
    eager = predict_view_logits(model, [floats], CPU, "32-true")
    assert torch.equal(predict_view_logits(model, [floats], CPU, "32-true", fast=True), eager)


def test_config_key_is_checked() -> None:
    for task in ("predict", "eval"):
        assert compose_config(task).inference.fast == "auto"
        for value in ("true", "false", "auto"):
            check_config(compose_config(task, [f"inference.fast={value}"]))
        with pytest.raises(UserError, match=r"inference.fast must be auto, true or false \(got 'sometimes'\)"):
            check_config(compose_config(task, ["inference.fast=sometimes"]))
    assert parse_fast("True") is True and parse_fast(False) is False and parse_fast("auto") == "auto"
    with pytest.raises(UserError, match="inference.fast must be one of auto, true, false"):
        parse_fast("yes please")


def test_predict_with_the_fast_path_forced_on(model: BCCClassifier, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """bcc-predict's wiring: inference.fast=true scores a folder (with TTA) as the eager model does."""
    from bcc_lightning.prediction.folder import predict

    ckpt = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": dict(model.hparams), "state_dict": model.state_dict()}, ckpt)
    for i in range(3):
        write_image(tmp_path / "images" / f"{i}.png", size=(50, 40), seed=i)
    common = {"threshold": 0.5, "batch_size": 2, "num_workers": 0, "accelerator": "cpu", "tta": True}
    eager = predict(ckpt, tmp_path / "images", tmp_path / "eager.csv", precision="32-true", fast=False, **common)
    with caplog.at_level(logging.INFO, logger="bcc_lightning"):
        fast = predict(ckpt, tmp_path / "images", tmp_path / "fast.csv", fast=True, **common)
    assert "Inference fast path: ONNX Runtime (fp32)" in caplog.text
    for a, b in zip(eager, fast):
        assert a["path"] == b["path"] and b["prob_malignant"] == pytest.approx(a["prob_malignant"], abs=TOLERANCE)
