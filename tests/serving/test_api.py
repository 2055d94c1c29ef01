"""bcc-serve over real HTTP on localhost: predictions, batches, the model card, and every kind of bad upload."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from bcc_lightning.prediction.folder import predict
from bcc_lightning.serving.api import UploadError, decode_upload
from bcc_lightning.tasks import serve as serve_task
from bcc_lightning.utils.errors import UserError
from tests.conftest import compose_config, write_image
from tests.serving import best_ckpt, running_server

TIMEOUT = 60  # seconds per request: a CPU Grad-CAM on a busy machine, never a hang


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's TMPDIR: uploads must leave nothing in it."""
    return tmp_path_factory.mktemp("serve_tmp")


@pytest.fixture(scope="module")
def server(trained_run: Path, spool: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # threshold=0.5: train.py's checkpoints carry no evaluated point, and threshold=auto stops for them (#24)
    with running_server(best_ckpt(trained_run), tmp_path_factory.mktemp("serve"), "max_upload_mb=2", "threshold=0.5",
                        "trainer.precision=32-true", "max_batch_size=4", "batch_timeout=0.05",
                        env={"TMPDIR": str(spool)}) as url:
        yield url


def demo_images(demo_root: Path, n: int) -> list[Path]:
    return sorted((demo_root / "test").rglob("*.png"))[:n]


def post(url: str, paths: list[Path], **data: str) -> requests.Response:
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    return requests.post(f"{url}/predict", files=files, data=data, timeout=TIMEOUT)


def test_health_and_one_image_match_bcc_predict(server: str, trained_run: Path, demo_root: Path,
                                                tmp_path: Path) -> None:
    assert requests.get(f"{server}/health", timeout=TIMEOUT).text.strip() == "ok"
    image = demo_images(demo_root, 1)[0]
    response = post(server, [image])
    assert response.status_code == 200, response.text
    [row] = response.json()
    assert row["name"] == image.name and set(row) == {"name", "prob_malignant", "label", "threshold"}
    assert row["label"] == ("malignant" if row["prob_malignant"] >= row["threshold"] else "benign")
    # the same probability and threshold as bcc-predict on the same file (both fp32, threshold=0.5)
    [expected] = predict(best_ckpt(trained_run), image, tmp_path / "p.csv", threshold=0.5, precision="32-true",
                         accelerator="cpu")
    assert row["prob_malignant"] == pytest.approx(expected["prob_malignant"], abs=1e-5)
    assert row["threshold"] == pytest.approx(expected["threshold"])


def test_several_images_with_heat_maps(server: str, demo_root: Path) -> None:
    paths = demo_images(demo_root, 3)
    response = requests.post(f"{server}/predict?cam=true", timeout=TIMEOUT,
                             files=[("file", (p.name, p.read_bytes(), "image/png")) for p in paths])
    assert response.status_code == 200, response.text
    rows = response.json()
    assert [r["name"] for r in rows] == [p.name for p in paths]
    for row, path in zip(rows, paths):
        with Image.open(io.BytesIO(base64.b64decode(row["cam_png"]))) as cam:
            assert cam.format == "PNG" and cam.size == Image.open(path).size
    # cam=false as a form field wins over the server's default
    assert "cam_png" not in post(server, paths[:1], cam="false").json()[0]


def test_concurrent_requests_each_get_their_own_answers(server: str, demo_root: Path) -> None:
    paths = demo_images(demo_root, 6)
    single = {p.name: post(server, [p]).json()[0]["prob_malignant"] for p in paths}
    with ThreadPoolExecutor(6) as pool:  # arrive together: the server batches them into shared forward passes
        answers = list(pool.map(lambda p: post(server, [p]), paths))
    for path, response in zip(paths, answers):
        assert response.status_code == 200
        [row] = response.json()
        assert row["name"] == path.name and row["prob_malignant"] == pytest.approx(single[path.name], abs=1e-5)


def _multipart(name: str, data: bytes) -> dict:
    return {"files": [("file", (name, data, "application/octet-stream"))]}


def test_bad_uploads_get_4xx_json_and_the_server_survives(server: str, demo_root: Path, tmp_path: Path,
                                                          spool: Path) -> None:
    # libraries imported by the worker (wandb) make temporary folders of their own at start: only new ones count
    before = set(spool.rglob("*"))
    good = demo_images(demo_root, 1)[0].read_bytes()
    jpeg = write_image(tmp_path / "x.jpg", size=(64, 48), fmt="JPEG").read_bytes()
    cases = {
        "not an image": _multipart("notes.txt", b"just some text, not pixels"),
        "truncated png": _multipart("cut.png", good[: len(good) // 2]),
        "truncated jpeg": _multipart("cut.jpg", jpeg[: len(jpeg) // 2]),
        "empty file": _multipart("empty.png", b""),
        "too large": _multipart("big.png", b"\0" * (3 * 2**20)),
        "wrong content type": {"json": {"file": "x"}},
        "no file field": {"files": [("image", ("a.png", good, "image/png"))]},
        "text in the file field": {"data": {"file": "x"}, "files": [("other", ("a.png", good, "image/png"))]},
        "empty body": {"data": b"", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
        "no content type": {"data": b""},
        "broken multipart": {"data": b"--x\r\ngarbage", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
    }
    for case, kwargs in cases.items():
        response = requests.post(f"{server}/predict", timeout=TIMEOUT, **kwargs)
        assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
        assert response.headers["content-type"].startswith("application/json"), case
        assert isinstance(response.json()["error"], str) and response.json()["error"], case
    statuses = {case: requests.post(f"{server}/predict", timeout=TIMEOUT, **cases[case]).status_code
                for case in ("too large", "wrong content type")}
    assert statuses == {"too large": 413, "wrong content type": 415}
    assert requests.get(f"{server}/nowhere", timeout=TIMEOUT).json()["error"]
    # still serving, and a 1.4 MB upload (spooled by the multipart parser) left no file behind
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert buffer.tell() > 2**20
    response = requests.post(f"{server}/predict", timeout=TIMEOUT, **_multipart("noise.png", buffer.getvalue()))
    assert response.status_code == 200, response.text
    assert requests.get(f"{server}/health", timeout=TIMEOUT).text.strip() == "ok"
    assert set(spool.rglob("*")) == before


def test_model_card(server: str, trained_run: Path) -> None:
    card = requests.get(f"{server}/model", timeout=TIMEOUT).json()
    assert card["model"]["backbone"] and card["model"]["input"]["img_size"] == 64
    # the file's name only: the server's folders are nobody's business (test_worker checks the whole card)
    assert card["checkpoint"]["path"] == best_ckpt(trained_run).name and len(card["checkpoint"]["sha256"]) == 64
    assert "accuracy" in card["metrics"] and card["intended_use"].startswith("Research use only")
    serving = card["serving"]
    assert 0 < serving["threshold"] < 1 and serving["classes"] == ["benign", "malignant"]
    assert serving["max_batch_size"] == 4 and serving["tta"] is False
    assert serving["max_image_megapixels"] == 40 and serving["max_aspect_ratio"] == 20


def test_page_is_served_without_external_resources(server: str) -> None:
    response = requests.get(f"{server}/", timeout=TIMEOUT)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert 'type="file"' in response.text and "http://" not in response.text and "https://" not in response.text


def test_decompression_bomb_is_413(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = write_image(tmp_path / "a.png", size=(64, 64)).read_bytes()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 pixels is over twice the limit: an error
    with pytest.raises(UploadError) as info:
        decode_upload(data, "a.png")
    assert info.value.status == 413 and "too large" in info.value.message


@pytest.mark.parametrize("override, message", [
    ([], "Usage: bcc-serve"), (["ckpt=/no/such.ckpt"], "does not exist"), (["host=192.0.2.1"], "host="),
    (["port=70000"], "port must"), (["max_batch_size=0"], "max_batch_size must"),
])
def test_user_errors(trained_run: Path, override: list[str], message: str) -> None:
    ckpt = [] if not override or override[0].startswith("ckpt=") else [f"ckpt={best_ckpt(trained_run)}",
                                                                       "threshold=0.5"]
    with pytest.raises(UserError, match=message):
        serve_task.run(compose_config("serve", ckpt + override))


def test_defaults_are_local_and_batched() -> None:
    cfg = compose_config("serve")
    assert cfg.host == "127.0.0.1" and cfg.port == 8000 and cfg.max_batch_size > 1 and cfg.threshold == "auto"


def test_fast_path_is_on_when_serving_from_a_cpu() -> None:
    from bcc_lightning.serving.api import server_fast

    for fast, on in (("auto", True), ("false", False), ("true", True)):
        cfg = compose_config("serve", ["trainer.accelerator=cpu", f"inference.fast={fast}"])
        assert server_fast(cfg.inference.fast, cfg.trainer.accelerator) is on
