"""``ClipSepIngress``: the HTTP API (FastAPI) and the web page, in front of ``ClipSepModel``.

The ingress reads uploads (counting bytes as they arrive), decodes them, checks every limit,
and encodes the answers; the model replicas only separate. Every error is JSON
``{"error": {"code", "message"}}``.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
(``Request``, the body models) at run time, and Serve's ingress wrapper hides their module.
"""
import asyncio
import hmac
import io
import logging
import os
import time
import uuid
import zipfile
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from clipsep_ray.serve.limits import (ApiError, Limits, TempArea, check_bool, check_format, check_query_list,
                                     check_uri_job, read_form, read_json, uri_prefixes)

logger = logging.getLogger("ray.serve")  # Serve writes it to the replica's log file

STATIC = files("clipsep_ray.serve") / "static"
PAGES = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
MEDIA = {"wav": "audio/wav", "flac": "audio/flac"}
#: How long a re-query that reached a replica not holding its id is sent again (with a growing
#: pause): Serve's routers learn which replica holds an id from its controller, within about a
#: second (replicas report every 0.1 s; a router waits up to 1 s for a matching replica).
ROUTE_DEADLINE_S = 3.0
#: Samples per second of ``max_seconds`` an upload may hold: a 1.3 MB FLAC may declare 655,350 Hz,
#: and 10 minutes of it decode to 1.6 GB in the ingress, then once more per stem in the replica.
UPLOAD_RATE_BUDGET = 48_000

app = FastAPI(title="clipsep_ray", description="Text-queried sound separation (CLIPSep + NIT)")


class Requery(BaseModel):
    queries: list = []
    format: str | None = None
    residual: bool | str | None = None


class UriJob(BaseModel):
    input: str
    output: str
    queries: list = []
    format: str | None = None


@app.exception_handler(ApiError)
async def _api_error(_request, exc: ApiError):
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_request, exc: RequestValidationError):
    where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
    return JSONResponse(ApiError(422, "bad_request", where).body(), status_code=422)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request, exc: StarletteHTTPException):
    """FastAPI's own answers (an unknown path, a method a path does not take) in the API's error shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(ApiError(exc.status_code, code, str(exc.detail)).body(), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


@app.exception_handler(Exception)
async def _unexpected(_request, exc: Exception):
    """A fault of the service: logged with its traceback under an id the answer gives, which holds
    no more (a replica's error text holds its traceback, paths and address)."""
    incident = uuid.uuid4().hex[:12]
    logger.error("internal error %s", incident, exc_info=exc)
    return JSONResponse(ApiError(500, "internal", f"internal error {incident} ({type(exc).__name__}): the "
                                                  "server's log has the details").body(), status_code=500)


def _version() -> str:
    try:
        return version("clipsep_ray")
    except PackageNotFoundError:
        return "unknown"


def _stages(result: dict, seconds: dict[str, float]) -> dict[str, float]:
    """ms per stage of a request: the ingress's own (``seconds``; "model" is the whole wait for
    the replica, hops included) and the replica's ("queries", "separate")."""
    return {**{k: 1000 * v for k, v in seconds.items()}, **result.get("timing", {})}


def _attachment(name: str) -> str:
    """A Content-Disposition for ``name`` (a query slug keeps its unicode: "犬.wav"): header values
    are latin-1, so an ASCII stand-in plus the UTF-8 name as RFC 6266's ``filename*``."""
    from urllib.parse import quote

    plain = name.encode("ascii", "replace").decode("ascii").replace("?", "_")
    if plain == name:
        return f'attachment; filename="{name}"'
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def _body_schema(model) -> dict:
    """OpenAPI for an endpoint that reads its JSON body itself (after the token check)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def _parse(request: Request, model):
    """The request's JSON body as ``model``: 413 past :data:`MAX_JSON_BYTES`, 422 naming what is wrong."""
    from pydantic import ValidationError

    data = await read_json(request)
    try:
        return model.model_validate_json(data or b"{}")
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}"
                          for e in exc.errors())
        raise ApiError(422, "bad_request", where) from None


@serve.deployment
@serve.ingress(app)
class ClipSepIngress:
    def __init__(self, model, limits: dict | None = None, token: str | None = None, temp_dir: str | None = None,
                 allow_uris: list[str] | None = None):
        self.model = model
        self.allow_uris = uri_prefixes(allow_uris)
        self.limits = Limits.from_args(limits or {})
        self.token = token or os.environ.get("CLIPSEP_TOKEN") or None
        self.area = TempArea(temp_dir, int(self.limits.temp_mb * 2**20))

    def __del__(self):
        self.area.close()

    # -- helpers ---------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        # Header values arrive decoded as latin-1 (HTTP's bytes): back to those bytes, against the token's UTF-8.
        # (strip only " \t": str.strip would also take \xa0, the last byte of a UTF-8 "à".)
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip(" \t").encode("latin-1", "replace"),
                                                                 self.token.encode("utf-8")):
            raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                           {"WWW-Authenticate": "Bearer"})

    async def call(self, method: str, *args, upload_id: str | None = None):
        from ray.exceptions import RayActorError

        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        handle = self.model.options(multiplexed_model_id=upload_id) if upload_id else self.model
        try:
            return await getattr(handle, method).remote(*args)
        except BackPressureError:
            raise ApiError(503, "busy", "the model queue is full: retry shortly", {"Retry-After": "1"}) from None
        except (RayActorError, DeploymentUnavailableError) as exc:
            raise ApiError(503, "unavailable", f"no model replica could answer ({type(exc).__name__}): retry "
                                               "shortly", {"Retry-After": "2"}) from None

    def decode(self, path: str) -> tuple[np.ndarray, int]:
        """The upload as mono float32 at its own rate; 400 if it does not decode, 413 if too long."""
        from clipsep_ray.audio.io import AudioDecodeError, AudioReader, RateError, check_rate

        try:
            with AudioReader(path) as reader:
                sr = reader.sample_rate
                check_rate(sr)
                # The limit counts samples: above 48 kHz it holds proportionally less time, so a
                # request's memory (the upload, then one copy per stem) does not grow with the rate.
                limit = int(self.limits.max_seconds * min(sr, UPLOAD_RATE_BUDGET))
                too_long = ApiError(413, "audio_too_long", f"the audio is longer than {limit / sr:g} s" + (
                    f" (at {sr:,} Hz: {self.limits.max_seconds:g} s at 48 kHz in samples)" if sr > UPLOAD_RATE_BUDGET
                    else ""))
                if reader.num_frames is not None and reader.num_frames > limit:
                    raise too_long
                blocks, n = [], 0
                for block in reader.blocks(sr * 10):
                    n += len(block)
                    if n > limit:
                        raise too_long
                    blocks.append(block)
        except AudioDecodeError as exc:
            raise ApiError(400, "undecodable_audio", f"the file does not decode: {exc.reason}") from None
        except RateError as exc:
            raise ApiError(400, "unsupported_sample_rate", str(exc)) from None
        return np.concatenate(blocks), int(sr)

    def answer(self, stems: dict, sr: int, queries: list[str], fmt: str, residual: bool, upload_id: str,
               timing: dict[str, float]) -> Response:
        """One audio file (one query, no residual) or a zip of ``<query slug>.<ext>`` + ``residual.<ext>``,
        encoded in memory (no file is written for an answer). ``timing`` (ms per stage) becomes the
        ``Server-Timing`` header, with the encoding added."""
        from clipsep_ray.audio.io import encode_audio
        from clipsep_ray.separate import RESIDUAL, output_files

        t0 = time.perf_counter()
        names = list(queries) + ([RESIDUAL] if residual else [])
        files = {n: os.path.basename(path) for n, path in output_files("", queries, fmt).items()}
        data = {n: encode_audio(stems[n], sr, fmt) for n in names}
        timing = {**timing, "encode": 1000 * (time.perf_counter() - t0)}
        headers = {"X-Separation-Id": upload_id,
                   "Server-Timing": ", ".join(f"{k};dur={v:.1f}" for k, v in timing.items())}
        if len(names) == 1:
            headers["Content-Disposition"] = _attachment(files[names[0]])
            return Response(data[names[0]], media_type=MEDIA[fmt], headers=headers)
        buf = io.BytesIO()
        # Stored, not deflated: PCM hardly compresses, and the web page reads the zip without a library.
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for n in names:
                zf.writestr(files[n], data[n])
        headers["Content-Disposition"] = 'attachment; filename="separation.zip"'
        return Response(buf.getvalue(), media_type="application/zip", headers=headers)

    @staticmethod
    def model_error(result: dict) -> None:
        if "error" in result:
            raise ApiError(result.get("status", 422), result.get("code", "bad_query"), result["error"],
                           result.get("headers"))

    # -- API -------------------------------------------------------------------------------
    @app.post("/v1/separate", openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file", "query"], "properties": {
            "file": {"type": "string", "format": "binary"},
            "query": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 8},
            "format": {"type": "string", "enum": ["wav", "flac"]},
            "residual": {"type": "boolean", "default": True}}}}}}})
    async def separate(self, request: Request):
        """Separate an uploaded file into one stem per query (+ the residual)."""
        self.authorize(request)
        form, path, folder = await read_form(request, self.area, int(self.limits.max_upload_mb * 2**20))
        try:
            queries = check_query_list(form.get("query", []))
            fmt = check_format((form.get("format") or [None])[-1])
            residual = check_bool("residual", (form.get("residual") or [None])[-1])
            if path is None:
                raise ApiError(422, "no_file", "the form has no 'file' part")
            t0 = time.perf_counter()
            wave, sr = await asyncio.to_thread(self.decode, path)
            self.area.remove(folder)  # now: its reservation made other uploads 503 while the model worked
            t1 = time.perf_counter()
            result = await self.call("separate", wave, sr, queries)
            self.model_error(result)
            timing = _stages(result, {"decode": t1 - t0, "model": time.perf_counter() - t1})
            return await asyncio.to_thread(self.answer, result["stems"], sr, queries, fmt, residual, result["id"],
                                           timing)
        finally:
            self.area.remove(folder)

    @app.post("/v1/separations/{upload_id}", openapi_extra=_body_schema(Requery))
    async def requery(self, upload_id: str, request: Request):
        """New queries on audio already uploaded, from its cached U-Net features."""
        self.authorize(request)
        body = await _parse(request, Requery)
        queries = check_query_list(body.queries)
        fmt, residual = check_format(body.format), check_bool("residual", body.residual)
        t0 = time.perf_counter()
        pause = 0.05
        while True:
            result = await self.call("requery", upload_id, queries, upload_id=upload_id)
            if not result.get("elsewhere") or time.perf_counter() - t0 + pause > ROUTE_DEADLINE_S:
                break
            await asyncio.sleep(pause)
            pause = min(2 * pause, 0.4)
        if result.get("missing") or result.get("elsewhere"):
            raise ApiError(404, "unknown_separation", f"no separation {upload_id!r} is kept (unknown or evicted): "
                                                      "upload the file again")
        self.model_error(result)
        timing = _stages(result, {"model": time.perf_counter() - t0})
        return await asyncio.to_thread(self.answer, result["stems"], result["sample_rate"], queries, fmt, residual,
                                       upload_id, timing)

    @app.post("/v1/separate-uri", openapi_extra=_body_schema(UriJob))
    async def separate_uri(self, request: Request):
        """Separate a file in object storage into stems written under ``output``."""
        self.authorize(request)
        body = await _parse(request, UriJob)
        queries = check_query_list(body.queries)
        fmt = check_format(body.format)
        check_uri_job(body.input, body.output, self.allow_uris)
        result = await self.call("separate_uri", body.input, body.output, queries, fmt)
        self.model_error(result)
        return {"outputs": result["outputs"]}

    @app.api_route("/healthz", methods=["GET", "HEAD"])  # HEAD: load balancers' and monitors' probes
    async def healthz(self):
        """200 only when a model replica separates a probe signal."""
        try:
            await self.call("healthy")
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=503, headers=exc.headers)
        except Exception as exc:  # a replica whose model fails the probe: its reason in the log, not to anyone
            logger.error("health probe failed", exc_info=exc)
            return JSONResponse(ApiError(503, "unhealthy", f"the model failed its probe ({type(exc).__name__})"
                                         ).body(), status_code=503)
        return {"status": "ok"}

    @app.get("/v1/info")
    async def info(self, request: Request):
        """Model, sample rate, limits, version and the batching counters of one model replica."""
        self.authorize(request)
        model = await self.call("info")
        return {**model, "version": _version(), "limits": self.limits.as_dict(), "auth": self.token is not None,
                "allow_uris": self.allow_uris}

    # -- the web page ----------------------------------------------------------------------
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index(self):
        return FileResponse(str(STATIC / "index.html"), media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str):
        if name not in PAGES:
            raise ApiError(404, "not_found", f"no such file: {name}")
        return FileResponse(str(STATIC / name), media_type=PAGES[name])
