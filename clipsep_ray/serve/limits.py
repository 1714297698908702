"""The service's limits, its error answers, and the upload reader that enforces them.

Nothing here imports Ray or torch: the limits are plain values checked in the ingress
before any model work, so a bad request costs no replica time.
"""
from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass, fields

MAX_QUERIES = 8
MAX_QUERY_CHARS = 200
FORMATS = ("wav", "flac")


class ApiError(Exception):
    """An answer other than 200: HTTP status, a stable code and a message naming the problem."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass
class Limits:
    """What one request may ask for, and how the model replicas batch (the Serve config's args)."""

    max_upload_mb: float = 100.0  # request body, counted while it is read
    max_seconds: float = 600.0  # decoded audio length of an upload (counted in samples at 48 kHz above that rate)
    max_batch_size: int = 16  # requests' window groups per U-Net call (@serve.batch)
    batch_wait_s: float = 0.01  # how long a batch waits to fill
    max_queued_requests: int = 64  # per model replica; beyond it: 503 + Retry-After
    cache_mb: float = 512.0  # U-Net features kept per model replica for re-queries (LRU)
    # Temporary area per replica, all its requests together: an ingress's uploads, a model's separate-uri outputs.
    temp_mb: float = 2048.0

    @classmethod
    def from_args(cls, args: dict) -> "Limits":
        known = {f.name: f.type for f in fields(cls)}
        out = cls()
        for k, v in args.items():
            if k in known:
                try:
                    setattr(out, k, int(v) if known[k] == "int" else float(v))
                except (TypeError, ValueError):
                    raise ValueError(f"serve argument {k}: expected a number, got {v!r}") from None
                value = getattr(out, k)
                if not math.isfinite(value) or value <= 0 and k != "batch_wait_s" or value < 0:
                    raise ValueError(f"serve argument {k} must be positive, got {v!r}")
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def uri_prefixes(value) -> list[str]:
    """The ``allow_uris`` arg (a list, or one comma-separated string) as checked prefixes."""
    from clipsep_ray.storage import is_object_store_uri, normalize_uri

    items = value.split(",") if isinstance(value, str) else list(value or [])
    out = []
    for item in (str(i).strip() for i in items):
        if not item:  # allow_uris: "" is none
            continue
        uri = normalize_uri(item)
        if not is_object_store_uri(uri) or "?" in uri or "#" in uri:
            raise ValueError(f"allow_uris: {item!r} is not an object-storage prefix such as s3://bucket/jobs/")
        out.append(uri)
    return out


def check_uri_job(source: str, dest: str, allowed: list[str]) -> None:
    """separate-uri's input and output: object-storage URIs under a prefix this server was started
    with (``allow_uris``), else a 403 (none given: separate-uri is off). Without it, anyone who could
    reach the API read any recording the service's credentials reach (the stems sum to the input)
    and overwrote any object they could write."""
    from clipsep_ray.storage import OBJECT_STORE_PROTOCOLS, is_object_store_uri, normalize_uri

    if not allowed:
        raise ApiError(403, "uri_jobs_disabled", "separate-uri is off: this server was started without object-"
                                                 "storage prefixes it may read and write (--allow-uri)")
    for role, given in (("input", source), ("output", dest)):
        uri = normalize_uri(given) if "://" in given else given  # S3:// is s3://; a plain path stays one
        if not is_object_store_uri(uri):  # never this host's files (file://), other hosts (http://), fsspec chains
            raise ApiError(422, "bad_uri", f"{role} {given!r} is not an object-storage URI: input and output must "
                                           f"be {', '.join(f'{p}://' for p in OBJECT_STORE_PROTOCOLS)} URIs")
        if "?" in uri or "#" in uri or {".", ".."} & set(uri.split("://", 1)[1].split("/")):
            raise ApiError(422, "bad_uri", f"{role} {given!r} has '?', '#', '.' or '..' in it: give the object's "
                                           "plain name")  # an output's '?versionId=' put every stem in one key
        if not any(_under(uri, p) for p in allowed):
            raise ApiError(403, "uri_not_allowed", f"{role} {given!r} is not under a prefix this server may use "
                                                   "(GET /v1/info lists them)")


#: Schemes that name the same objects.
_SAME_STORE = {"s3a": "s3", "gcs": "gs", "abfss": "abfs"}


def _under(uri: str, prefix: str) -> bool:
    """``uri`` is ``prefix``'s folder or inside it; a prefix ends at a '/' (``s3://b/out`` does not
    hold ``s3://b/outer``)."""
    def plain(u: str) -> str:
        scheme, rest = u.split("://", 1)
        return f"{_SAME_STORE.get(scheme, scheme)}://{rest.rstrip('/')}/"

    return plain(uri).startswith(plain(prefix))


def check_query_list(queries) -> list[str]:
    """1 to 8 distinct, non-empty text queries of at most 200 characters, else a 422."""
    from clipsep_ray.separate import RESIDUAL, output_files

    if not isinstance(queries, list) or not queries:
        raise ApiError(422, "no_query", "give at least one query, e.g. 'dog barking'")
    if len(queries) > MAX_QUERIES:
        raise ApiError(422, "too_many_queries", f"at most {MAX_QUERIES} queries per request, got {len(queries)}")
    out = []
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            raise ApiError(422, "empty_query", f"query #{i + 1} is empty: give a sound to look for")
        if len(q.strip()) > MAX_QUERY_CHARS:
            raise ApiError(422, "query_too_long", f"query #{i + 1} has {len(q.strip())} characters "
                                                  f"(at most {MAX_QUERY_CHARS})")
        out.append(q.strip())
    if len(set(out)) != len(out):
        raise ApiError(422, "repeated_query", f"repeated query in {out}")
    if RESIDUAL in out:
        raise ApiError(422, "reserved_query", f"'{RESIDUAL}' names the rest of the mixture: ask for the sound itself")
    try:
        output_files("", out, "wav")
    except ValueError as exc:
        raise ApiError(422, "clashing_queries", str(exc)) from None
    return out


def check_format(value) -> str:
    fmt = "wav" if value in (None, "") else str(value).lower()
    if fmt not in FORMATS:
        raise ApiError(422, "bad_format", f"format must be one of {', '.join(FORMATS)}, not {value!r}")
    return fmt


def check_bool(name: str, value, default: bool = True) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ApiError(422, f"bad_{name}", f"{name} must be true or false, not {value!r}")


def _with_extension(path: str, client_name: bytes | None) -> str:
    """The upload's temporary file renamed to carry the client's file extension when it is one the
    decoder knows: the decoder is chosen by it, and an extensionless MP3 went to libsndfile, which
    stops a joined MP3 at its first part's length (FFmpeg decodes it whole)."""
    from clipsep_ray.audio.io import extension, is_media_file

    ext = extension((client_name or b"").decode("utf-8", "replace"))
    if not ext or not is_media_file("x" + ext):
        return path
    os.rename(path, path + ext)
    return path + ext


_AREA_PREFIX = "clipsep-serve-"


def _sweep_dead_areas(root: str | None) -> int:
    """Removes the areas of this host's replicas that died (killed, or their node restarted): each
    area's name holds its process id, and a killed replica's uploads stayed on disk for good, outside
    every area's count. Returns how many were removed."""
    base, host, removed = root or tempfile.gettempdir(), socket.gethostname(), 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        owner = name[len(_AREA_PREFIX):].rsplit("-", 2) if name.startswith(_AREA_PREFIX) else []
        if len(owner) == 3 and owner[0] == host and owner[1].isdigit() and not _alive(int(owner[1])):
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class TempArea:
    """A folder that holds the uploads being read, at most ``max_bytes`` over all requests;
    each request gets its own subfolder, whose bytes count until :meth:`remove` deletes it."""

    def __init__(self, root: str | None, max_bytes: int):
        _sweep_dead_areas(root)
        self.root = tempfile.mkdtemp(prefix=f"{_AREA_PREFIX}{socket.gethostname()}-{os.getpid()}-", dir=root)
        self.max_bytes = max_bytes
        self._held: dict[str, int] = {}

    @property
    def used(self) -> int:
        return sum(self._held.values())

    def request_dir(self) -> str:
        folder = tempfile.mkdtemp(dir=self.root)
        self._held[folder] = 0
        return folder

    def reserve(self, folder: str, n: int) -> None:
        if self._held[folder] + n > self.max_bytes:  # more than the whole area: retrying cannot help
            raise ApiError(413, "too_large_for_temp_area", f"this request needs {(self._held[folder] + n) / 2**20:.0f} "
                                                           f"MB of temporary space; the server's area holds "
                                                           f"{self.max_bytes / 2**20:.0f} MB: ask fewer queries or "
                                                           "send shorter audio")
        if self.used + n > self.max_bytes:
            raise ApiError(503, "busy", "the server's temporary area is full: retry shortly", {"Retry-After": "5"})
        self._held[folder] += n

    def remove(self, folder: str) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        self._held.pop(folder, None)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def declared_over(request, max_bytes: int) -> int | None:
    """The body's Content-Length when it promises more than ``max_bytes`` (refused before reading)."""
    declared = request.headers.get("content-length")
    return int(declared) if declared is not None and declared.isdigit() and int(declared) > max_bytes else None


#: A JSON request body (queries and options; URIs): far more than any valid one needs.
MAX_JSON_BYTES = 64 * 1024


async def read_json(request, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """A JSON body's bytes, refused (413) as soon as it passes ``max_bytes``: the endpoints read it
    only after the token is checked, so no unauthorised body is buffered."""
    too_large = ApiError(413, "body_too_large", f"a JSON body may hold at most {max_bytes // 1024} KB")
    if declared_over(request, max_bytes):
        raise too_large
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > max_bytes:
            raise too_large
    return bytes(data)


async def read_form(request, area: TempArea, max_bytes: int) -> tuple[dict[str, list[str]], str | None, str]:
    """Stream a multipart body into ``area``: (fields, path of the ``file`` part or None, request folder).

    The byte count is checked on every chunk, so a body over ``max_bytes`` is refused (413)
    as soon as it passes the limit, and a Content-Length that promises more is refused before
    reading. The caller gives the returned folder back with ``area.remove`` when done.
    """
    from python_multipart.multipart import FormParser, parse_options_header

    limit_mb = max_bytes / 2**20
    declared = declared_over(request, max_bytes)
    if declared:
        raise ApiError(413, "upload_too_large", f"the upload has {declared / 2**20:.1f} MB; "
                                                f"the limit is {limit_mb:g} MB")
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise ApiError(422, "bad_request", "send a multipart/form-data body with a 'file' part")
    folder = area.request_dir()
    form: dict[str, list[str]] = {}
    files: dict[str, str] = {}

    def on_field(f) -> None:
        name = f.field_name.decode("utf-8", "replace")
        form.setdefault(name, []).append((f.value or b"").decode("utf-8", "replace"))

    def on_file(f) -> None:
        f.flush_to_disk()
        f.file_object.flush()
        files[f.field_name.decode("utf-8", "replace")] = _with_extension(f.actual_file_name.decode(), f.file_name)

    seen = 0
    try:  # the parser too: it refuses a boundary over 256 bytes in its constructor
        parser = FormParser("multipart/form-data", on_field, on_file, boundary=params[b"boundary"],
                            config={"UPLOAD_DIR": folder, "MAX_MEMORY_FILE_SIZE": 0, "UPLOAD_DELETE_TMP": False,
                                    "MAX_BODY_SIZE": max_bytes + 1})
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > max_bytes:
                raise ApiError(413, "upload_too_large", f"the upload passed the limit of {limit_mb:g} MB")
            area.reserve(folder, len(chunk))
            parser.write(chunk)
        parser.finalize()
    except ApiError:
        area.remove(folder)
        raise
    except Exception as exc:  # python-multipart's parse errors
        area.remove(folder)
        raise ApiError(422, "bad_request", f"malformed multipart body: {exc}") from None
    except BaseException:  # the client went away or the request timed out: Serve cancels the handler
        area.remove(folder)
        raise
    for name in files:
        if name != "file":
            os.remove(files[name])
    return form, files.get("file"), folder
