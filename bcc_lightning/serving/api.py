"""The HTTP API on LitServe: POST /predict (multipart images -> JSON), GET /model (the card), GET / (the page).

Bad uploads are refused at the edge (`UploadGuard`, in the HTTP process), before they reach the inference worker:
the guard reads each image's header (its size, without decoding a pixel) and checks the budgets, then hands the
worker a plain JSON body (base64 bytes) that pickles across LitServe's process queue; nothing is written to disk.
The worker decodes each image once and resizes it at once, so a batch holds only model-sized tensors. An image that
still fails there (truncated data, a resize that cannot allocate) fails only its own request: LitServe's batched loop
would fail every request of the batch if `decode_request` or `predict` raised, so neither does.

`run_server` runs the server so that SIGTERM stops it as Ctrl+C does, with every process it started, and a dead
inference worker is restarted (or the server stops with exit status WORKER_DIED_EXIT and says why).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import gc
import io
import json
import logging
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

# imageio sets ImageFile.LOAD_TRUNCATED_IMAGES = False on import: a truncated upload is refused, not grey-padded.
from bcc_lightning.data.imageio import ImageBudget, ImageDecodeError, ImageTooLargeError, load_rgb, read_header
from bcc_lightning.data.labels import CLASS_NAMES
from bcc_lightning.data.preprocess import read_pixels, to_pixels
from bcc_lightning.models.checkpoint import load_checkpoint, read_checkpoint
from bcc_lightning.models.inference import fast_runner, parse_fast, predict_view_logits, view_probabilities, want_fast
from bcc_lightning.reports.card import build_card
from bcc_lightning.reports.gradcam import explain, overlay, plan_cam
from bcc_lightning.serving.page import PAGE_HTML
from bcc_lightning.utils.device import pick_device

log = logging.getLogger("bcc_lightning.serve")

MAX_FILES = 64  # images per request; more belong in bcc-predict (a folder), not one HTTP body
CAM_SIDE = 512  # heat maps are drawn on the image scaled to at most this side, as save_overlays does
FORWARD_CHUNK = 64  # images per forward pass: a batch of 8 requests of 64 images must not become one 512-image pass
STOP_GRACE_S = 3.0  # seconds the HTTP process may finish answering after a stop signal (LitServe's default: 30)
WORKER_DIED_EXIT = 3  # exit status when the inference worker died more often than worker_restarts allows
RESTART_WINDOW_S = 600.0  # worker_restarts counts the deaths within this many seconds
TRUE_WORDS = ("1", "true", "yes", "on")
USAGE = "Send multipart/form-data with one or more images in fields named 'file', e.g. curl -F file=@image.png URL."


def server_fast(setting: Any, accelerator: str) -> bool:
    """inference.fast for a server: `auto` is on when it serves from a CPU, since a server scores images for as long
    as it runs and the one-off export (1-6 s) happens at start-up, before the first request."""
    choice = parse_fast(setting)
    if choice == "auto":
        return pick_device(accelerator).type == "cpu"
    return bool(choice)


@dataclass(frozen=True)
class ServeSettings:
    """Everything the inference worker needs; plain data, because LitServe pickles the API into its workers."""

    ckpt: str
    point: dict[str, Any] = field(default_factory=lambda: {"threshold": 0.5, "method": "fixed"})
    threshold_method: str = "fixed"
    tta: bool = False
    cam: bool = False  # the default when a request does not say cam=true/false
    cam_layer: str | None = None
    max_batch_size: int = 8
    batch_timeout: float = 0.01
    workers: int = 1
    max_upload_mb: float = 20.0
    # Budgets, checked on the headers before anything reaches the worker (conf/serve.yaml says what each bounds).
    max_image_megapixels: float = 40.0
    max_aspect_ratio: float = 20.0
    max_request_megapixels: float = 100.0
    max_batch_megapixels: float = 400.0
    worker_restarts: int = 3
    accelerator: str = "auto"
    precision: Any = "auto"
    timeout: float = 60.0
    # The inference fast path (ONNX Runtime on a CPU): True builds it at start-up, so no request waits for the
    # export. "auto" is off here: a server cannot know how many images it will score.
    fast: Any = False

    @property
    def threshold(self) -> float:
        return float(self.point["threshold"])

    @property
    def temperature(self) -> float:
        return float(self.point.get("temperature", 1.0))

    @property
    def budget(self) -> ImageBudget:
        return ImageBudget(max_pixels=int(self.max_image_megapixels * 1e6), max_aspect=self.max_aspect_ratio)


class UploadError(Exception):
    """An upload the API refuses: HTTP status and the message for the JSON body's 'error'."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _upload_error(exc: ImageDecodeError, name: str) -> UploadError:
    """imageio's reason, under the upload's name, as a 413 (over a budget) or a 400."""
    reason = str(exc).split(": ", 1)[-1]
    if isinstance(exc, ImageTooLargeError):
        return UploadError(413, f"{name}: {reason}.")
    if isinstance(exc.__cause__, UnidentifiedImageError):
        return UploadError(400, f"{name}: not an image Pillow can read. Upload a JPEG, PNG, TIFF or BMP image.")
    if "not a readable image" in reason:
        kind = "truncated image" if "truncated" in reason.lower() else "not an image Pillow can read"
        return UploadError(400, f"{name}: {kind} ({reason}). Upload a complete JPEG, PNG, TIFF or BMP image.")
    return UploadError(400, f"{name}: {reason}. Upload a JPEG, PNG, TIFF or BMP image.")


def check_upload(data: bytes, name: str = "upload", budget: ImageBudget | None = None) -> int:
    """The upload's header against `budget` (nothing decoded); returns its pixel count, or raises UploadError."""
    try:
        header = read_header(data, budget or ImageBudget(), name)
    except ImageDecodeError as exc:
        raise _upload_error(exc, name) from exc
    return header.width * header.height


def decode_upload(data: bytes, name: str = "upload", budget: ImageBudget | None = None) -> Image.Image:
    """Uploaded bytes -> 8-bit RGB through imageio's `load_rgb` (truncation and decompression bombs are errors, and
    `budget` is checked on the header first); raises UploadError saying what is wrong."""
    try:
        return load_rgb(data, budget or ImageBudget(), name)
    except ImageDecodeError as exc:
        raise _upload_error(exc, name) from exc


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in TRUE_WORDS


class _InFlight:
    """The decoded megapixels of the requests handed to the inference worker and not yet answered (its batch and
    queue): a request that would take the total over the budget waits for others to be answered."""

    def __init__(self, budget_mp: float) -> None:
        self.budget_mp, self.used_mp = budget_mp, 0.0
        self.changed: asyncio.Condition | None = None  # made on first use, inside the server's event loop

    @contextlib.asynccontextmanager
    async def hold(self, megapixels: float, timeout: float) -> Any:
        self.changed = self.changed or asyncio.Condition()
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.used_mp + megapixels <= self.budget_mp),
                                       timeout)
            except asyncio.TimeoutError as exc:
                raise UploadError(503, f"Server busy: {self.used_mp:.1f} megapixels of images are already waiting "
                                       f"for the model (max_batch_megapixels={self.budget_mp:g}) and none finished "
                                       f"within {timeout:g} s. Try again later.") from exc
            self.used_mp += megapixels
        try:
            yield
        finally:
            async with self.changed:
                self.used_mp -= megapixels
                self.changed.notify_all()


class UploadGuard:
    """ASGI middleware for POST `path`: checks the multipart upload (type, size, fields, image headers against the
    budgets) and passes on a JSON body {"images": [{"name", "data"}], "cam"}; anything wrong is answered 4xx
    {"error": ...} here. It also bounds how long a request waits for the worker (`timeout`): a request whose worker
    died gets a 504 instead of waiting for ever."""

    def __init__(self, app: Any, path: str = "/predict", max_bytes: int = 20 * 2**20, cam_default: bool = False,
                 max_files: int = MAX_FILES, budget: ImageBudget | None = None,
                 max_request_megapixels: float = math.inf, max_batch_megapixels: float = math.inf,
                 timeout: float = 60.0) -> None:
        self.app, self.path, self.max_bytes = app, path, max_bytes
        self.cam_default, self.max_files = cam_default, max_files
        self.budget = budget or ImageBudget()
        self.max_request_mp, self.timeout = max_request_megapixels, timeout
        self.in_flight = _InFlight(max_batch_megapixels)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            payload, megapixels = await self._payload(scope, receive)
            async with self.in_flight.hold(megapixels, self.timeout):
                await self._forward(scope, receive, send, payload)
        except UploadError as exc:
            await JSONResponse({"error": exc.message}, status_code=exc.status)(scope, receive, send)

    async def _forward(self, scope: dict, receive: Any, send: Any, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        delivered, started = False, False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the client's disconnect, if any

        async def watched_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app({**scope, "headers": headers}, replay, watched_send), self.timeout + 1)
        except asyncio.TimeoutError:
            if started:
                raise
            # LitServe waits for the worker's answer without a deadline: one that died with the request never answers
            raise UploadError(504, f"No answer from the model within timeout={self.timeout:g} s (its worker may "
                                   f"have been restarted). Try again.") from None

    async def _read_body(self, scope: dict, receive: Any) -> bytes:
        limit_mb = self.max_bytes / 2**20
        too_large = UploadError(413, f"Request larger than max_upload_mb={limit_mb:g} MB. Send fewer or smaller "
                                     f"images per request, or start the server with a larger max_upload_mb.")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise too_large  # refused before reading: a huge body is never buffered
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise UploadError(400, "The client disconnected before the upload was complete.")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _check_images(self, files: list[tuple[str, bytes]]) -> float:
        """Every image's header against the budgets (nothing decoded); the request's megapixels."""
        total = 0.0
        for name, data in files:
            total += check_upload(data, name, self.budget) / 1e6
        limit = min(self.max_request_mp, self.in_flight.budget_mp)
        if total > limit:
            key = "max_request_megapixels" if limit == self.max_request_mp else "max_batch_megapixels"
            raise UploadError(413, f"The {len(files)} images of this request hold {total:.1f} megapixels together, "
                                   f"over the limit of {limit:g} ({key}). Send them in several requests, or "
                                   f"downscale them.")
        return total

    async def _payload(self, scope: dict, receive: Any) -> tuple[dict[str, Any], float]:
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1").lower()
        if not content_type.startswith("multipart/form-data"):
            raise UploadError(415, f"Wrong content type {content_type or '(none)'!r}. {USAGE}")
        body = await self._read_body(scope, receive)
        if not body:
            raise UploadError(400, f"Empty request body. {USAGE}")
        sent = False

        async def once() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        request = Request(scope, receive=once)
        try:
            form = await request.form(max_files=self.max_files + 1, max_fields=100)
        except Exception as exc:  # starlette raises its HTTPException or MultiPartException for broken bodies
            raise UploadError(400, f"Malformed multipart body ({getattr(exc, 'detail', exc)}). {USAGE}") from exc
        try:
            uploads = form.getlist("file")
            if not uploads:
                raise UploadError(400, f"No field named 'file' in the form. {USAGE}")
            if len(uploads) > self.max_files:
                raise UploadError(413, f"{len(uploads)} images in one request; at most {self.max_files} are accepted. "
                                       f"Split them over several requests.")
            files = []
            for index, upload in enumerate(uploads):
                if not isinstance(upload, UploadFile):
                    raise UploadError(400, f"Field 'file' #{index + 1} is text, not a file upload. {USAGE}")
                files.append(((upload.filename or f"image{index + 1}")[-255:], await upload.read()))
            # Headers only, but a TIFF's can be long: off the event loop, so /health keeps answering.
            megapixels = await asyncio.to_thread(self._check_images, files)
            query = dict(part.split("=", 1) for part in scope.get("query_string", b"").decode().split("&")
                         if "=" in part)
            cam_value = form.get("cam") if form.get("cam") is not None else query.get("cam")
            cam = self.cam_default if cam_value is None else _truthy(cam_value)
            images = [{"name": name, "data": base64.b64encode(data).decode("ascii")} for name, data in files]
            return {"images": images, "cam": cam}, megapixels
        finally:
            await form.close()  # spooled upload buffers are released with the request


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the process that started it dies, even by SIGKILL, so that no worker
    outlives its server (it would hold the model's memory for nothing)."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class BCCLitAPI(ls.LitAPI):
    """One checkpoint behind LitServe; with max_batch_size > 1 the images of several requests share a forward pass.

    A request that fails here (decoding, resizing) becomes {"error", "status"} for its own answer only: neither
    decode_request nor predict raises, since LitServe fails the whole batch when they do."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout)
        self.settings = settings

    def setup(self, device: str) -> None:
        _die_with_parent()
        # Ctrl+C reaches the whole process group; the server stops this worker itself, after the HTTP process, so a
        # KeyboardInterrupt here would only print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # not `self.device`: LitServe keeps its own device string there
        self.torch_device = torch.device(device)
        self.model = load_checkpoint(self.settings.ckpt).to(self.torch_device).eval()
        if want_fast(self.settings.fast, None, self.torch_device):
            fast_runner(self.model)  # cached on the model; built now rather than in the first request
        self.plan: Any = None  # Grad-CAM layer, found on the first request that asks for maps

    def _decode(self, name: str, data: bytes, cam: bool) -> tuple[str, torch.Tensor, Image.Image | None]:
        """One upload -> (name, model-sized pixels, the image scaled to at most CAM_SIDE for a heat map or None).
        The full-size decode is dropped as soon as it is resized: a batch holds only model-sized tensors."""
        pre = self.model.preprocess
        try:
            if not cam:
                return name, read_pixels(data, pre), None  # predict's path: the same pixels as bcc-predict's
            image = load_rgb(data, self.settings.budget, name)
        except ImageDecodeError as exc:
            raise _upload_error(exc, name) from exc
        pixels = to_pixels(image, pre)
        if max(image.size) > CAM_SIDE:
            scale = CAM_SIDE / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        return name, pixels, image

    def decode_request(self, request: dict) -> dict[str, Any]:
        cam = bool(request.get("cam"))
        try:
            images = [self._decode(item["name"], base64.b64decode(item["data"]), cam) for item in request["images"]]
        except UploadError as exc:
            return {"error": exc.message, "status": exc.status}
        except Exception as exc:  # a resize that cannot allocate, an odd file Pillow chokes on: this request only
            log.warning("an upload failed in the worker", exc_info=True)
            return {"error": f"Could not process the image ({type(exc).__name__}: {exc}).", "status": 422}
        return {"images": images, "cam": cam}

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(inputs)  # requests hold different numbers of images: stacked in predict

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def predict(self, x: Any) -> Any:
        if self.max_batch_size > 1:
            return self.infer(x)
        return self.infer([x])[0]

    def encode_response(self, output: Any) -> Any:
        if isinstance(output, dict) and "error" in output:
            return JSONResponse({"error": output["error"]}, status_code=int(output["status"]))  # pickles to the API
        return output

    def infer(self, requests: list[dict[str, Any]]) -> list[Any]:
        """Per request: one result per image, or its error. The good requests share forward passes; if one of those
        fails, each request is tried on its own, so that only the request at fault fails."""
        results: list[Any] = [r if "error" in r else None for r in requests]
        good = [i for i, r in enumerate(requests) if "error" not in r]
        if not good:
            return results
        try:
            for i, answer in zip(good, self._infer([requests[i] for i in good])):
                results[i] = answer
        except Exception:
            if len(good) == 1:
                log.warning("inference failed for one request", exc_info=True)
                results[good[0]] = {"error": "The model could not score this request.", "status": 500}
                return results
            for i in good:
                results[i] = self.infer([requests[i]])[0]
        return results

    def _infer(self, requests: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """One forward pass (in chunks of FORWARD_CHUNK images) over every image of `requests`."""
        settings = self.settings
        flat = [(r, k, name, image) for r, request in enumerate(requests)
                for k, (name, _, image) in enumerate(request["images"])]
        pixels = torch.stack([px for request in requests for _, px, _ in request["images"]])
        chunks = [pixels[i:i + FORWARD_CHUNK] for i in range(0, len(pixels), FORWARD_CHUNK)]
        logits = predict_view_logits(self.model, chunks, self.torch_device, settings.precision, settings.tta,
                                     fast=settings.fast)
        probs, spread = view_probabilities(logits, settings.temperature)
        results: list[list[dict[str, Any]]] = [[] for _ in requests]
        for i, (r, _, name, _) in enumerate(flat):
            prob = float(probs[i])
            row: dict[str, Any] = {"name": name, "prob_malignant": prob,
                                   "label": CLASS_NAMES[int(prob >= settings.threshold)],
                                   "threshold": settings.threshold}
            if spread is not None:
                row["uncertainty"] = float(spread[i])
            results[r].append(row)
        wanted = [i for i, (r, _, _, _) in enumerate(flat) if requests[r]["cam"]]
        if wanted:
            self._add_cams(flat, pixels, wanted, results)
        return results

    def _add_cams(self, flat: list[tuple[int, int, str, Image.Image]], pixels: torch.Tensor, wanted: list[int],
                  results: list[list[dict[str, Any]]]) -> None:
        """A Grad-CAM overlay (PNG, base64) of the predicted class for each image in `wanted`."""
        if self.plan is None:
            self.plan = plan_cam(self.model, self.model.backbone_arch, self.model.preprocess.img_size,
                                 self.settings.cam_layer)
        rows = [results[flat[i][0]][flat[i][1]] for i in wanted]
        predicted = [int(row["label"] == CLASS_NAMES[1]) for row in rows]
        maps = explain(self.model, pixels[wanted].to(self.torch_device), predicted, self.plan)
        for i, row, cam in zip(wanted, rows, maps):
            buffer = io.BytesIO()
            overlay(flat[i][3], cam).save(buffer, format="PNG")  # decode_request scaled it to at most CAM_SIDE
            row["cam_png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
            row["cam_method"] = self.plan.description


# An absolute path inside a string (a POSIX one, or a Windows one with its drive), wherever it starts: after "=",
# "from ", a quote... but not the "//" of a URL.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])(?:[A-Za-z]:[\\/]|/)[^\s'\"`,;()]*")


def without_paths(value: Any) -> Any:
    """`value` (JSON-like) with every absolute path shortened to its file name: the card is public, and the server's
    folders (user names, mount points) are nobody's business."""
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda m: re.split(r"[\\/]", m.group().rstrip("\\/"))[-1] or "/", value)
    return value


def model_card(settings: ServeSettings) -> dict[str, Any]:
    """GET /model: the model card (checkpoint hyperparameters + the evaluation summary its operating point carries)
    and how this server decides."""
    ckpt = Path(settings.ckpt)
    hparams = dict(read_checkpoint(ckpt)["hyper_parameters"])
    provenance = settings.point.get("provenance") or {}
    result = {"metrics": provenance.get("metrics") or {}, "data_root": provenance.get("data_root"),
              "split": provenance.get("split"), "fold": provenance.get("fold"), "operating_point": settings.point}
    card = build_card(hparams, result, str(ckpt))
    card["serving"] = {"threshold": settings.threshold, "threshold_method": settings.threshold_method,
                       "temperature": settings.temperature, "tta": settings.tta, "classes": list(CLASS_NAMES),
                       "max_batch_size": settings.max_batch_size, "batch_timeout": settings.batch_timeout,
                       "max_upload_mb": settings.max_upload_mb,
                       "evaluation": provenance.get("eval_run") or settings.point.get("source")}
    card["serving"].update(max_files=MAX_FILES, max_image_megapixels=settings.max_image_megapixels,
                           max_aspect_ratio=settings.max_aspect_ratio,
                           max_request_megapixels=settings.max_request_megapixels,
                           max_batch_megapixels=settings.max_batch_megapixels)
    # Round-trip through JSON once here: a value FastAPI cannot encode must fail at start, not on every GET. The card
    # is public: no absolute path of the server's (without_paths).
    return without_paths(json.loads(json.dumps(card, default=str)))


def _error_handlers(app: FastAPI) -> None:
    """Every error answers {"error": message}, LitServe's and FastAPI's own included."""

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"Invalid request: {exc.errors()}. {USAGE}"}, status_code=422)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


class BCCServer(ls.LitServer):
    """LitServer whose worker monitor restarts a dead inference worker (at most `worker_restarts` times within
    RESTART_WINDOW_S) and otherwise stops the server in order, recording why in `failure`.

    LitServe's own monitor either stops the server from its thread, which leaves the main thread to die on the
    closed manager with an EOFError traceback, or (restart_workers=True) restarts the worker without limit."""

    worker_restarts = 3
    failure: str | None = None
    stopping = False

    def _start_worker_monitoring(self, manager: Any, uvicorn_workers: Any) -> None:
        # LitServe calls this once every process has started.
        threading.Thread(target=self._watch_workers, daemon=True, name="bcc-worker-monitor").start()

    def _watch_workers(self) -> None:
        deaths: deque[float] = deque()
        while not self.stopping:
            for index, process in enumerate(list(self.inference_workers)):
                if process.is_alive() or self.stopping:
                    continue
                code = process.exitcode
                how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                       else f"exit status {code}")
                if code == -signal.SIGKILL:
                    how += ", which is how the kernel's out-of-memory killer ends a process"
                now = time.monotonic()
                deaths.append(now)
                while now - deaths[0] > RESTART_WINDOW_S:
                    deaths.popleft()
                if len(deaths) > self.worker_restarts:
                    self.failure = (f"The inference worker died ({how}) {len(deaths)} times within "
                                    f"{RESTART_WINDOW_S / 60:g} minutes, more than worker_restarts="
                                    f"{self.worker_restarts} allows, so the server stopped. If it ran out of memory, "
                                    f"lower max_batch_size, workers or the image budgets (max_image_megapixels, "
                                    f"max_batch_megapixels).")
                    self._shutdown_event.set()  # the main thread's wait returns: LitServe's own orderly shutdown
                    return
                print(f"The inference worker (pid {process.pid}) died ({how}); starting a new one (restart "
                      f"{len(deaths)} of at most {self.worker_restarts} within {RESTART_WINDOW_S / 60:g} minutes). "
                      f"Requests it held get an error; new ones wait for it.", file=sys.stderr, flush=True)
                lit_api = self.litapi_connector.lit_apis[0]
                self.inference_workers[index] = self.launch_single_inference_worker(lit_api, index)
            time.sleep(0.5)


def _reap_children(grace: float = STOP_GRACE_S) -> None:
    """Terminate, then kill, every process this one started that is still running (a stop signal during start-up
    arrives before LitServe can stop them itself)."""
    children = multiprocessing.active_children()
    for child in children:
        with contextlib.suppress(Exception):
            child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join(1)


def run_server(server: BCCServer, host: str, port: int, log_level: str = "warning") -> None:
    """server.run on `host`:`port`, stopped in order by SIGINT (Ctrl+C), SIGTERM (kill, systemd, docker stop,
    Kubernetes) or SIGHUP: the HTTP process, the inference workers and LitServe's manager all end and the port is
    free within a few seconds. Exits with WORKER_DIED_EXIT, after saying why, when the worker kept dying."""
    owner, received = os.getpid(), []

    def stop(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked child that inherited this handler: end as the signal would
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if received:
            return  # already stopping: a second signal must not cut the shutdown short and orphan the workers
        received.append(signum)
        server.stopping = True
        raise KeyboardInterrupt  # LitServe stops its processes on the path Ctrl+C takes

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, stop) for signum in stop_signals}
    if hasattr(os, "register_at_fork"):
        # LitServe forks the HTTP process and the manager: they end with this process even if it is SIGKILLed.
        os.register_at_fork(after_in_child=_die_with_parent)
    try:
        server.run(host=host, port=port, num_api_servers=1, generate_client_file=False, log_level=log_level)
    except KeyboardInterrupt:
        pass  # a signal before LitServe's try block (during start-up): the children are reaped below
    finally:
        server.stopping = True
        _reap_children()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # The interpreter's last garbage collection walks torch's whole heap: 8-10 s on a busy machine, during which
        # a stopped server still looks alive. Nothing is left to collect that matters.
        gc.freeze()
    if server.failure:
        print(f"\nerror: {server.failure}", file=sys.stderr, flush=True)
        sys.exit(WORKER_DIED_EXIT)
    if received:
        print(f"Stopped ({signal.Signals(received[0]).name}).", flush=True)


def build_server(settings: ServeSettings) -> BCCServer:
    """The LitServer with /predict, /health (LitServe's), /model and the page at /."""
    accelerator = {"gpu": "cuda"}.get(settings.accelerator, settings.accelerator)
    guard = {"path": "/predict", "max_bytes": int(settings.max_upload_mb * 2**20), "cam_default": settings.cam,
             "budget": settings.budget, "max_request_megapixels": settings.max_request_megapixels,
             "max_batch_megapixels": settings.max_batch_megapixels, "timeout": settings.timeout}
    server = BCCServer(BCCLitAPI(settings), accelerator=accelerator, workers_per_device=settings.workers,
                       timeout=settings.timeout, middlewares=[(UploadGuard, guard)], disable_openapi_url=True)
    server.worker_restarts = settings.worker_restarts
    server.uvicorn_graceful_timeout = STOP_GRACE_S
    card = model_card(settings)
    app = server.app

    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE_HTML)

    async def model() -> JSONResponse:
        return JSONResponse(card)

    # LitServe answers GET / with a plain "litserve running": the page takes its place.
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/"]
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/model", model, methods=["GET"])
    _error_handlers(app)
    return server
