"""The HTTP API on LitServe: POST /predict (multipart images -> JSON), GET /model (the card), GET / (the page).

Bad uploads are refused at the edge (`UploadGuard`, in the HTTP process), before they reach the inference worker:
LitServe's batched loop fails every request of a batch when one of them raises, so one broken file must never get
that far. The guard decodes each upload once to check it, then hands the worker a plain JSON body (base64 bytes) that
pickles across LitServe's process queue; nothing is written to disk.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import warnings
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
from bcc_lightning.data.imageio import to_rgb
from bcc_lightning.data.labels import CLASS_NAMES
from bcc_lightning.data.preprocess import to_pixels
from bcc_lightning.models.checkpoint import load_checkpoint, read_checkpoint
from bcc_lightning.models.inference import fast_runner, predict_view_logits, view_probabilities, want_fast
from bcc_lightning.reports.card import build_card
from bcc_lightning.reports.gradcam import explain, overlay, plan_cam
from bcc_lightning.serving.page import PAGE_HTML

MAX_FILES = 64  # images per request; more belong in bcc-predict (a folder), not one HTTP body
CAM_SIDE = 512  # heat maps are drawn on the image scaled to at most this side, as save_overlays does
TRUE_WORDS = ("1", "true", "yes", "on")
USAGE = "Send multipart/form-data with one or more images in fields named 'file', e.g. curl -F file=@image.png URL."


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


class UploadError(Exception):
    """An upload the API refuses: HTTP status and the message for the JSON body's 'error'."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def decode_upload(data: bytes, name: str = "upload") -> Image.Image:
    """Uploaded bytes -> 8-bit RGB through imageio's `to_rgb`, with load_rgb's limits (truncation and decompression
    bombs are errors); raises UploadError saying what is wrong."""
    if not data:
        raise UploadError(400, f"{name}: empty file (0 bytes). Upload a JPEG, PNG, TIFF or BMP image.")
    try:
        with warnings.catch_warnings():
            # As load_rgb: Pillow's bomb warning is an error, so a huge image cannot exhaust the server's memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                rgb = to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(413, f"{name}: image too large to decode safely ({exc}). Downscale it first.") from exc
    except UnidentifiedImageError as exc:
        raise UploadError(400, f"{name}: not an image Pillow can read. Upload a JPEG, PNG, TIFF or BMP.") from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...) for broken files.
        kind = "truncated image" if "truncated" in str(exc).lower() else "unreadable image"
        raise UploadError(400, f"{name}: {kind} ({type(exc).__name__}: {exc}). Upload the complete file.") from exc
    if rgb.width < 1 or rgb.height < 1:
        raise UploadError(400, f"{name}: image has no pixels.")
    return rgb


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in TRUE_WORDS


class UploadGuard:
    """ASGI middleware for POST `path`: checks the multipart upload (type, size, fields, decodable images) and passes
    on a JSON body {"images": [{"name", "data"}], "cam"}; anything wrong is answered 4xx {"error": ...} here."""

    def __init__(self, app: Any, path: str = "/predict", max_bytes: int = 20 * 2**20, cam_default: bool = False,
                 max_files: int = MAX_FILES) -> None:
        self.app, self.path, self.max_bytes = app, path, max_bytes
        self.cam_default, self.max_files = cam_default, max_files

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            payload = await self._payload(scope, receive)
        except UploadError as exc:
            await JSONResponse({"error": exc.message}, status_code=exc.status)(scope, receive, send)
            return
        body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the client's disconnect, if any

        await self.app({**scope, "headers": headers}, replay, send)

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

    async def _payload(self, scope: dict, receive: Any) -> dict[str, Any]:
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
            images = []
            for index, upload in enumerate(uploads):
                if not isinstance(upload, UploadFile):
                    raise UploadError(400, f"Field 'file' #{index + 1} is text, not a file upload. {USAGE}")
                name = (upload.filename or f"image{index + 1}")[-255:]
                data = await upload.read()
                # Decoding is CPU work: off the event loop, so /health and other requests keep answering.
                await asyncio.to_thread(decode_upload, data, name)
                images.append({"name": name, "data": base64.b64encode(data).decode("ascii")})
            query = dict(part.split("=", 1) for part in scope.get("query_string", b"").decode().split("&")
                         if "=" in part)
            cam_value = form.get("cam") if form.get("cam") is not None else query.get("cam")
            cam = self.cam_default if cam_value is None else _truthy(cam_value)
            return {"images": images, "cam": cam}
        finally:
            await form.close()  # spooled upload buffers are released with the request


class BCCLitAPI(ls.LitAPI):
    """One checkpoint behind LitServe; with max_batch_size > 1 the images of several requests share a forward pass."""

    def __init__(self, settings: ServeSettings) -> None:
        super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout)
        self.settings = settings

    def setup(self, device: str) -> None:
        # not `self.device`: LitServe keeps its own device string there
        self.torch_device = torch.device(device)
        self.model = load_checkpoint(self.settings.ckpt).to(self.torch_device).eval()
        if want_fast(self.settings.fast, None, self.torch_device):
            fast_runner(self.model)  # cached on the model; built now rather than in the first request
        self.plan: Any = None  # Grad-CAM layer, found on the first request that asks for maps

    def decode_request(self, request: dict) -> dict[str, Any]:
        # Already checked by UploadGuard; decoded again here because PIL images do not travel through the queue.
        images = [(item["name"], decode_upload(base64.b64decode(item["data"]), item["name"]))
                  for item in request["images"]]
        return {"images": images, "cam": bool(request.get("cam"))}

    def batch(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(inputs)  # requests hold different numbers of images: stacked in predict

    def unbatch(self, output: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return output

    def predict(self, x: Any) -> Any:
        if self.max_batch_size > 1:
            return self.infer(x)
        return self.infer([x])[0]

    def encode_response(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def infer(self, requests: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        """One forward pass over every image of `requests`; per request, one result per image."""
        settings, pre = self.settings, self.model.preprocess
        flat = [(r, k, name, image) for r, request in enumerate(requests)
                for k, (name, image) in enumerate(request["images"])]
        pixels = torch.stack([to_pixels(image, pre) for _, _, _, image in flat])
        logits = predict_view_logits(self.model, [pixels], self.torch_device, settings.precision, settings.tta,
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
            image = flat[i][3]
            if max(image.size) > CAM_SIDE:
                scale = CAM_SIDE / max(image.size)
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
            buffer = io.BytesIO()
            overlay(image, cam).save(buffer, format="PNG")
            row["cam_png"] = base64.b64encode(buffer.getvalue()).decode("ascii")
            row["cam_method"] = self.plan.description


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
    # Round-trip through JSON once here: a value FastAPI cannot encode must fail at start, not on every GET.
    return json.loads(json.dumps(card, default=str))


def _error_handlers(app: FastAPI) -> None:
    """Every error answers {"error": message}, LitServe's and FastAPI's own included."""

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"Invalid request: {exc.errors()}. {USAGE}"}, status_code=422)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def build_server(settings: ServeSettings) -> ls.LitServer:
    """The LitServer with /predict, /health (LitServe's), /model and the page at /."""
    accelerator = {"gpu": "cuda"}.get(settings.accelerator, settings.accelerator)
    guard = {"path": "/predict", "max_bytes": int(settings.max_upload_mb * 2**20), "cam_default": settings.cam}
    server = ls.LitServer(BCCLitAPI(settings), accelerator=accelerator, workers_per_device=settings.workers,
                          timeout=settings.timeout, middlewares=[(UploadGuard, guard)], disable_openapi_url=True)
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
