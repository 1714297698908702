"""What an archive job reads and where each input's outputs go.

INPUT_URI is a local folder, an ``s3://`` (or other fsspec) prefix walked recursively, or a
CSV / Parquet list of URIs (column ``uri``, else the first column). Every file whose
extension is an audio or video one is an input, whatever its name (``...wav`` included);
other files are counted as ignored, never dropped silently.

Each input's outputs go to ``OUTPUT_URI/<relative path without its extension>/``, every path
component passed through :func:`clipsep_ray.storage.safe_component` (and kept off the job's own
names, :data:`RESERVED`); inputs whose sanitised paths collide each get a short hash of their
original relative path appended, so both survive.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from dataclasses import dataclass
from urllib.parse import unquote

from clipsep_ray import storage
from clipsep_ray.audio.io import extension, is_media_file

LIST_EXTENSIONS = (".csv", ".parquet")
#: What the job keeps at the top of OUTPUT_URI. An input whose output folder would take one of these
#: names (``_tmp.wav``, ``_tmp/x.wav``, ``_job.json.mp3``) gets ``~`` appended to it: the clean-up of
#: ``_tmp/`` would otherwise delete its outputs after they were recorded as done.
TMP, JOB, MANIFEST, MANIFEST_CSV = "_tmp", "_job.json", "_manifest.parquet", "_manifest.csv"
RESERVED = frozenset({TMP, JOB, MANIFEST, MANIFEST_CSV})


class InputError(ValueError):
    """An INPUT_URI that cannot be listed; the message names it."""


@dataclass(frozen=True)
class ArchiveInput:
    uri: str  # full URI (or absolute local path) of the input
    relative_path: str  # as found under INPUT_URI (or in the list), "/"-separated
    out_dir: str  # sanitised output folder, relative to OUTPUT_URI
    size: int | None = None  # bytes, where the listing gives it (a folder or prefix; not a CSV/Parquet list)

    @property
    def key(self) -> str:
        """A stable, name-independent id for temporary files."""
        return hashlib.sha1(self.relative_path.encode("utf-8")).hexdigest()[:16]


def _from_list(uri: str, endpoint: str | None) -> list[tuple[str, str, int | None]]:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = storage.read_bytes(uri, endpoint)
    try:
        if uri.lower().endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
        else:
            table = pacsv.read_csv(io.BytesIO(data))
            if "uri" not in table.column_names and table.num_columns and is_media_file(table.column_names[0]):
                # no header line (`ls > list.csv`): the first "column name" is the first input
                table = pacsv.read_csv(io.BytesIO(data), pacsv.ReadOptions(autogenerate_column_names=True))
    except Exception as exc:
        raise InputError(f"{uri}: not a readable list of URIs: {exc}") from None
    if table.num_columns == 0:
        raise InputError(f"{uri}: the list has no columns")
    column = "uri" if "uri" in table.column_names else table.column_names[0]
    out = []
    for i, u in enumerate(table.column(column).to_pylist()):
        if not u:
            raise InputError(f"{uri}: row {i + 1} has an empty {column!r}")
        u = storage.normalize_uri(str(u))
        # what names its outputs and row: a URL's host and path (decoded), without a presigned URL's query
        name = storage.without_query(u)
        name = unquote(name) if name.lower().startswith(("http://", "https://")) else name
        rel = name.split("://", 1)[-1].lstrip("/")
        out.append((u, rel, None))
    seen: dict[str, str] = {}
    for u, rel, _ in out:  # s3://b/x.wav and s3a://b/x.wav: one object, and one row and folder in the outputs
        if rel in seen:
            raise InputError(f"{uri}: {seen[rel]} and {u} have the same path {rel!r} after the scheme, which names "
                             "an input's outputs and manifest row: list each input once")
        seen[rel] = u
    return out


def _from_tree(uri: str, endpoint: str | None, exclude: str | None) -> list[tuple[str, str, int | None]]:
    fs, root = storage.url_to_fs(uri, endpoint)
    if not fs.exists(root):
        raise InputError(f"input {uri} does not exist")
    if fs.isfile(root):
        return [(storage.to_uri(fs, root), root.rsplit("/", 1)[-1], fs.size(root))]
    skip = storage.url_to_fs(exclude, endpoint)[1].rstrip("/") + "/" if exclude else None
    out = []
    if storage.is_local(fs):
        found = _local_tree(root, skip)
    else:
        found = {path: info.get("size") for path, info in fs.find(root, detail=True).items()}
    for path in sorted(found):
        if skip and (path + "/").startswith(skip):
            continue
        out.append((storage.to_uri(fs, path), path[len(root.rstrip("/")) + 1:], found[path]))
    return out


def _local_tree(root: str, skip: str | None) -> dict[str, int | None]:
    """{path: size} of every file under a local folder, through symbolic links to folders (fsspec's
    find listed such a link as one file without an extension, and its recordings were left out as
    "ignored"), each real folder once (a link loop ends), in a stable order that reaches a folder
    by its own name before a link's; never into ``skip`` (OUTPUT_URI, a link to it included: the
    stems of earlier runs would be separated again). A dangling link is listed, to fail its row."""
    out, seen = {}, set()
    skip_real = os.path.realpath(skip) + "/" if skip else None
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen or skip_real and (real + "/").startswith(skip_real):
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders.sort(key=lambda name: (os.path.islink(os.path.join(folder, name)), name))
        for name in names:
            path = os.path.join(folder, name)
            try:
                out[path] = os.path.getsize(path)
            except OSError:
                out[path] = None
    return out


def list_inputs(input_uri: str, output_uri: str | None = None, endpoint: str | None = None
                ) -> tuple[list[ArchiveInput], dict[str, int]]:
    """(inputs in a stable order, {extension: files} of those ignored for their extension)."""
    uri = storage.normalize_uri(input_uri)
    if output_uri and uri.rstrip("/") == storage.normalize_uri(output_uri).rstrip("/"):
        raise InputError(f"OUTPUT_URI is INPUT_URI ({input_uri}): give the outputs a folder of their own")
    try:
        if uri.lower().endswith(LIST_EXTENSIONS):
            found, ignored = _from_list(uri, endpoint), {}
        else:
            every = _from_tree(uri, endpoint, storage.normalize_uri(output_uri) if output_uri else None)
            found = [f for f in every if is_media_file(f[1])]
            ignored = dict(Counter(extension(rel) or "(none)" for _, rel, _ in every if not is_media_file(rel)))
    except Exception as exc:  # an s3 AccessDenied, a missing bucket, an unreachable endpoint
        if not storage.is_storage_fault(exc) or isinstance(exc, InputError):
            raise
        raise InputError(f"input {input_uri} cannot be listed: {type(exc).__name__}: {exc}") from None
    bad = [rel for _, rel, _ in found if not is_media_file(rel)]
    if bad:
        raise InputError(f"{input_uri}: {len(bad)} listed file(s) have no audio or video extension, "
                         f"e.g. {bad[0]!r}")
    return assign_output_dirs(found), ignored


def assign_output_dirs(found: list[tuple[str, str, int | None]]) -> list[ArchiveInput]:
    def sanitised(rel: str) -> str:
        parts = rel.split("/")
        parts[-1] = parts[-1][: len(parts[-1]) - len(extension(parts[-1]))]
        parts = [storage.safe_component(p) for p in parts]
        if parts[0].lower() in RESERVED:
            parts[0] += "~"
        return "/".join(parts)

    names = [sanitised(rel) for _, rel, _ in found]
    counts: dict[str, int] = {}
    for n in names:
        counts[n.lower()] = counts.get(n.lower(), 0) + 1  # case-insensitive stores collide too
    out = []
    for (uri, rel, size), name in zip(found, names):
        if counts[name.lower()] > 1:
            name = f"{name}~{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:8]}"
        out.append(ArchiveInput(uri, rel, name, size))
    if len({i.uri for i in out}) != len(out):
        dup = next(u for u in (i.uri for i in out) if sum(j.uri == u for j in out) > 1)
        raise InputError(f"input {dup} is listed more than once")
    return out


def largest_first(inputs: list[ArchiveInput]) -> list[ArchiveInput]:
    """The order to separate in: largest files first (unknown sizes last, listing order kept
    among equals). Each actor takes the next file when it is free, so a long file started
    last would keep one actor busy alone while the others idle; started first, it runs while
    the others get through the short ones."""
    return sorted(inputs, key=lambda i: (i.size is None, -(i.size or 0)))
