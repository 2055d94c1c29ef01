"""The inference worker's side of bcc-serve, in this process (no server): one bad image fails only its own request,
the batch holds model-sized pixels only, and heat-map images are scaled down as they are decoded."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from fastapi.responses import JSONResponse
from PIL import Image

from bcc_lightning.serving.api import CAM_SIDE, BCCLitAPI, ServeSettings, model_card, without_paths
from tests.conftest import write_image
from tests.serving import best_ckpt


@pytest.fixture(scope="module")
def worker(trained_run: Path) -> BCCLitAPI:
    api = BCCLitAPI(ServeSettings(ckpt=str(best_ckpt(trained_run)), precision="32-true", max_batch_size=8))
    api.setup("cpu")
    return api


def _request(*files: tuple[str, bytes], cam: bool = False) -> dict:
    return {"images": [{"name": n, "data": base64.b64encode(d).decode()} for n, d in files], "cam": cam}


def _answers(worker: BCCLitAPI, requests: list[dict]) -> list:
    """What LitServe's batched loop does with one batch: decode each, predict together, encode each."""
    outputs = worker.unbatch(worker.predict(worker.batch([worker.decode_request(r) for r in requests])))
    assert len(outputs) == len(requests)
    return [worker.encode_response(o) for o in outputs]


def test_a_bad_image_fails_only_its_own_request(worker: BCCLitAPI, demo_root: Path, tmp_path: Path) -> None:
    good = sorted((demo_root / "test").rglob("*.png"))[:3]
    jpeg = write_image(tmp_path / "x.jpg", size=(300, 200), fmt="JPEG").read_bytes()
    alone = [_answers(worker, [_request((p.name, p.read_bytes()))])[0][0]["prob_malignant"] for p in good]
    batch = [_request((good[0].name, good[0].read_bytes())),
             _request(("cut.jpg", jpeg[: len(jpeg) // 2])),  # its header is fine: it fails in the worker
             _request((good[1].name, good[1].read_bytes()), (good[2].name, good[2].read_bytes())),
             _request((good[2].name, good[2].read_bytes()), ("bad.png", b"\x89PNG\r\n\x1a\nrest"))]
    first, cut, pair, mixed = _answers(worker, batch)
    assert isinstance(cut, JSONResponse) and cut.status_code == 400
    assert json.loads(cut.body)["error"].startswith("cut.jpg: truncated image")
    assert isinstance(mixed, JSONResponse) and mixed.status_code == 400 and "bad.png" in json.loads(mixed.body)["error"]
    assert first[0]["prob_malignant"] == pytest.approx(alone[0], abs=1e-6)
    assert [r["prob_malignant"] for r in pair] == pytest.approx(alone[1:], abs=1e-6)


def test_a_request_that_breaks_the_forward_pass_fails_alone(worker: BCCLitAPI, demo_root: Path) -> None:
    good = sorted((demo_root / "test").rglob("*.png"))[0]
    decoded = worker.decode_request(_request((good.name, good.read_bytes())))
    size = worker.model.preprocess.img_size
    broken = {"images": [("odd.png", torch.zeros(4, size, size, dtype=torch.uint8), None)], "cam": False}
    answers = worker.predict([decoded, broken, decoded])  # 4 channels: neither stacked with the others nor alone
    assert answers[0] == answers[2] and answers[0][0]["name"] == good.name
    assert answers[1]["status"] == 500 and "error" in answers[1]


def test_the_batch_holds_model_sized_pixels_and_small_heat_map_images(worker: BCCLitAPI) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1000), (200, 100, 150)).save(buffer, format="PNG")
    decoded = worker.decode_request(_request(("big.png", buffer.getvalue()), cam=True))
    [(name, pixels, small)] = decoded["images"]
    size = worker.model.preprocess.img_size
    assert pixels.shape == (3, size, size) and pixels.dtype == torch.uint8
    assert small.size == (CAM_SIDE, CAM_SIDE // 2)  # the 2000x1000 decode is not kept
    [row] = worker.predict([decoded])[0]
    with Image.open(io.BytesIO(base64.b64decode(row["cam_png"]))) as cam:
        assert cam.size == (CAM_SIDE, CAM_SIDE // 2)


def test_the_model_card_holds_no_absolute_path(trained_run: Path) -> None:
    card = model_card(ServeSettings(ckpt=str(best_ckpt(trained_run)),
                                    threshold_method=f"youden; from {trained_run}/test/metrics.json"))
    text = json.dumps(card)
    assert str(trained_run) not in text and str(Path.home()) not in text and '"/' not in text
    assert card["checkpoint"]["path"] == best_ckpt(trained_run).name and len(card["checkpoint"]["sha256"]) == 64
    assert card["serving"]["threshold_method"] == "youden; from metrics.json"
    assert without_paths({"a": ["ckpt=/srv/x/m.ckpt see http://h/x", "C:\\Users\\me\\m.ckpt", "rel/m.ckpt"]}) == {
        "a": ["ckpt=m.ckpt see http://h/x", "m.ckpt", "rel/m.ckpt"]}
