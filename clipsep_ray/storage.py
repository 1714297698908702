"""Object storage: URIs, filesystems and atomic writes, for every stage (no Ray, no torch).

Every path is an fsspec URI: a local folder (the embedded default), ``s3://`` and any
other fsspec protocol. S3 endpoints: an explicit ``endpoint_url`` or the standard AWS
variables ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO, moto, ...), so one URI
works on AWS, MinIO and a local test server. Credentials come from the usual AWS chain
(environment, profile, instance role) and are never written anywhere.

Output names built from user input (queries, input file names) go through :func:`slug`,
so no such path can leave its output folder.
"""
from __future__ import annotations

import contextlib
import os
import re
import uuid

_S3_PROTOCOLS = ("s3", "s3a")
#: Object stores, as opposed to protocols that reach this machine's files or other hosts
#: (``local://``, ``file://``, ``http://``, fsspec chains such as ``simplecache::``).
OBJECT_STORE_PROTOCOLS = (*_S3_PROTOCOLS, "gs", "gcs", "az", "abfs", "abfss")
S3_ENDPOINT_ENV = "AWS_ENDPOINT_URL_S3"


def _protocol(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else "file"


def is_object_store_uri(uri: str) -> bool:
    """True for ``<object store>://bucket/...`` (:data:`OBJECT_STORE_PROTOCOLS`, lower case as fsspec
    knows them), and nothing else."""
    proto, sep, rest = uri.partition("://")
    return bool(sep) and proto in OBJECT_STORE_PROTOCOLS and "::" not in uri and bool(rest.strip("/"))


def endpoint_url(explicit: str | None = None) -> str | None:
    """The S3 endpoint override: ``explicit``, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL."""
    return explicit or os.environ.get(S3_ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL") or None


@contextlib.contextmanager
def endpoint_env(explicit: str | None):
    """Within the block, ``explicit`` (when given) is this process's S3 endpoint for code that
    takes none (checkpoint loading, the audio readers and writers): ``AWS_ENDPOINT_URL_S3``, which
    botocore and :func:`endpoint_url` prefer to ``AWS_ENDPOINT_URL``. Restored afterwards."""
    if not explicit:
        yield
        return
    saved = os.environ.get(S3_ENDPOINT_ENV)
    os.environ[S3_ENDPOINT_ENV] = explicit
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(S3_ENDPOINT_ENV, None)
        else:
            os.environ[S3_ENDPOINT_ENV] = saved


def storage_options(uri: str, endpoint: str | None = None) -> dict:
    """fsspec storage options for ``uri`` (an S3 endpoint override where one is set)."""
    if _protocol(uri) in _S3_PROTOCOLS:
        ep = endpoint_url(endpoint)
        return {"endpoint_url": ep} if ep else {}
    return {}


def normalize_uri(uri: str) -> str:
    """Local paths become absolute (Ray workers may run elsewhere); URIs are kept."""
    uri = os.fspath(uri)
    if "://" not in uri:
        return os.path.abspath(os.path.expanduser(uri))
    scheme, rest = uri.split("://", 1)
    uri = scheme.lower() + "://" + rest  # "S3://b/k", "FILE:///x": schemes are case-insensitive (RFC 3986)
    if uri.startswith("file://"):
        return os.path.abspath(uri[len("file://"):])
    return uri


def without_query(uri: str) -> str:
    """An http(s) URL without its query string and fragment (a presigned URL's signature names no
    file); any other URI as it is (``?`` and ``#`` may be part of an object's name)."""
    if uri.lower().startswith(("http://", "https://")):
        return uri.split("?", 1)[0].split("#", 1)[0]
    return uri


def url_to_fs(uri: str, endpoint: str | None = None):
    """(fsspec filesystem, path inside it) for ``uri``, honouring the S3 endpoint override.

    ``::`` is part of a name here, never an fsspec chain: ``fsspec.core.url_to_fs`` read an input
    ``s3://b/in/10::30 talk.wav`` as the key ``in/10``, and put every output of such a name in one
    object."""
    import fsspec

    uri = normalize_uri(uri)
    cls = fsspec.get_filesystem_class(_protocol(uri))
    return cls(**{**cls._get_kwargs_from_urls(uri), **storage_options(uri, endpoint)}), cls._strip_protocol(uri)


def filesystem(uri: str, endpoint: str | None = None):
    """The fsspec filesystem holding ``uri`` (Ray Data and pyarrow accept it as ``filesystem=``)."""
    return url_to_fs(uri, endpoint)[0]


def join_uri(base: str, *names: str) -> str:
    out = normalize_uri(base).rstrip("/")
    for n in names:
        out = out + "/" + n.strip("/")
    return out


def to_uri(fs, path: str) -> str:
    """Inverse of :func:`url_to_fs`: a full URI for ``path`` on ``fs``."""
    proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if proto in ("file", "local"):
        return path
    return f"{proto}://{path}" if "://" not in path else path


def is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def is_storage_fault(exc: BaseException) -> bool:
    """An error of the file system or object store itself (missing bucket, refused access,
    unreachable endpoint): an OSError, or botocore's and aiohttp's own exceptions, which s3fs lets
    through (a wrong --endpoint-url was a traceback with exit 1)."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("botocore", "aiobotocore", "aiohttp")


#: The hidden temporary name of a local file being written (:func:`hidden_temp`): what a killed
#: job can leave behind, and what the archive's clean-up removes.
TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


def hidden_temp(path: str) -> str:
    """A temporary name beside ``path``, hidden, unique, matching :data:`TEMP_NAME`: the file is
    written there and renamed onto ``path`` when complete."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes(uri: str, data: bytes, endpoint: str | None = None) -> None:
    """Write a whole object atomically: a reader sees the old object or the complete new one.

    Local files are written to a hidden temporary name beside the target and renamed; on
    object stores a single PUT publishes the object only when its upload completes.
    """
    fs, path = url_to_fs(uri, endpoint)
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        os.makedirs(parent, exist_ok=True)
        tmp = hidden_temp(path)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:  # object stores publish an object only when its upload completes
        with fs.open(path, "wb") as fh:
            fh.write(data)


def read_bytes(uri: str, endpoint: str | None = None) -> bytes:
    fs, path = url_to_fs(uri, endpoint)
    with fs.open(path, "rb") as fh:
        return fh.read()


def exists(uri: str, endpoint: str | None = None) -> bool:
    fs, path = url_to_fs(uri, endpoint)
    return fs.exists(path)


def write_text(uri: str, text: str, endpoint: str | None = None) -> None:
    """:func:`write_bytes` of UTF-8 text."""
    write_bytes(uri, text.encode("utf-8"), endpoint)


def slug(text: str, max_len: int = 60, empty: str = "query") -> str:
    """A safe file name for a query or an input name: no separators, no dots first, bounded length;
    ``empty`` when nothing printable is left (a file named ``...wav`` has the stem ``..``)."""
    s = re.sub(r"[^\w\-]+", "_", text.strip(), flags=re.UNICODE).strip("_.")
    return (s[:max_len] or empty).lower()


def safe_component(name: str, max_bytes: int = 120) -> str:
    """One path component built from an input's name, safe to create under an output folder:
    no separators or control characters, no leading dots or spaces (so never ``..`` nor a hidden
    name), at most ``max_bytes`` of UTF-8; letters of any script, case and spaces are kept
    readable. Empty results become ``_``."""
    s = "".join("_" if ch in "/\\\0" or ord(ch) < 32 or ord(ch) == 127 else ch for ch in name)
    s = s.strip().lstrip(". ").rstrip(". ")
    while len(s.encode("utf-8")) > max_bytes:
        s = s[:-1]
    return s or "_"
