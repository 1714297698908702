"""Shards -> shards with frozen CLIP image embeddings of every frame (a Ray Data actor pool).

Each input shard is handled by one call of a model actor (:class:`ShardEmbedder`, holding
a :class:`~clipsep_ray.models.query.QueryEncoder`; one GPU per actor where the cluster has
GPUs): frames are decoded, encoded in batches, and the shard is written under the same
name in ``OUTPUT_URI`` with ``image_embeddings`` (n_frames x D raw embeddings) and
``embedding_model`` (``QueryEncoder.name``) filled in. A frame that cannot be decoded
leaves its row's embeddings null (counted; training skips such rows).

Idempotent: an output shard that already holds the same clips embedded by the same model
is skipped (``--overwrite`` recomputes). Random-init models (``--clip-pretrained ''``,
tests only) are seeded, so they too give identical embeddings on every run.

Labels, where the shards have them, get text embeddings in
``OUTPUT_URI/_text_embeddings.parquet``: label, the template embedding ("a photo of
{label}"), the prompt-ensemble mean, and the prompts and model used.
"""
from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clipsep_ray import storage
from clipsep_ray.data import schema
from clipsep_ray.runtime import init_ray

TEXT_SCHEMA_FIELDS = ("label", "embedding", "embedding_ensemble", "prompt_template", "prompt_ensemble",
                      "embedding_model")


def _encoder(clip_model: str, clip_pretrained: str, device: str, clip_config_dir: str | None,
             prompt_template: str = "a photo of {}", prompt_ensemble=()):
    import torch

    from clipsep_ray.models.query import QueryEncoder, register_clip_configs

    register_clip_configs(clip_config_dir)
    # Random-init weights (pretrained '') must not differ between runs or actors.
    torch.manual_seed(0)
    return QueryEncoder(clip_model, clip_pretrained, device, prompt_template, list(prompt_ensemble))


def _decode_image(data: bytes):
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        return img.convert("RGB")
    except Exception:
        return None


def _embeddings_column(row_counts: list[int], ok_rows: list[bool], flat: np.ndarray):
    """(total_frames, D) -> list<list<float32>> with one n_frames x D list per row (null where not ok)."""
    import pyarrow as pa

    d = flat.shape[1] if flat.ndim == 2 else 0
    values = pa.array(flat.reshape(-1), type=pa.float32())
    inner = pa.ListArray.from_arrays(pa.array(np.arange(flat.shape[0] + 1, dtype=np.int32) * d), values)
    offsets = np.concatenate([[0], np.cumsum(row_counts)]).astype(np.int32)
    mask = pa.array([not ok for ok in ok_rows])
    return pa.ListArray.from_arrays(pa.array(offsets), inner, mask=mask)


class ShardEmbedder:
    """Ray Data callable class: one row per shard (input, output URI) in, one summary row out."""

    def __init__(self, clip_model: str, clip_pretrained: str, clip_config_dir: str | None = None,
                 batch_size: int = 256, endpoint: str | None = None, overwrite: bool = False):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.encoder = _encoder(clip_model, clip_pretrained, device, clip_config_dir)
        self.batch_size, self.endpoint, self.overwrite = batch_size, endpoint, overwrite
        self.pool = ThreadPoolExecutor(4)  # JPEG decoding overlaps the model

    def _up_to_date(self, src, dst: str) -> bool:
        """The output already holds exactly these clips embedded by this model."""
        if self.overwrite or not storage.exists(dst, self.endpoint):
            return False
        try:
            out = schema.read_shard(dst, ["clip_id", "embedding_model", "image_embeddings"], self.endpoint)
        except Exception:
            return False
        if out.column("clip_id").to_pylist() != src.column("clip_id").to_pylist():
            return False
        models = set(out.column("embedding_model").to_pylist())
        # Rows whose frames could not be decoded stay null; they are not "missing work".
        return models <= {self.encoder.name, None} and self.encoder.name in models

    def embed_table(self, table):
        """A shard table -> (the same table with embeddings, frames_failed)."""
        import pyarrow as pa

        frames = table.column("frames").to_pylist()
        counts = [len(f) for f in frames]
        flat_bytes = [b for f in frames for b in f]
        images = list(self.pool.map(_decode_image, flat_bytes))
        bad = {i for i, im in enumerate(images) if im is None}
        ok_rows, k = [], 0
        for n in counts:
            ok_rows.append(n > 0 and not any(i in bad for i in range(k, k + n)))
            k += n
        keep = [im for i, im in enumerate(images) if im is not None]
        d = self.encoder.embed_dim
        emb = np.zeros((len(images), d), np.float32)
        if keep:
            enc = self.encoder.encode_images(keep, batch_size=self.batch_size).numpy()
            emb[[i for i in range(len(images)) if i not in bad]] = enc
        column = _embeddings_column(counts, ok_rows, emb)
        names = pa.array([self.encoder.name if ok else None for ok in ok_rows], pa.string())
        table = table.set_column(table.schema.get_field_index("image_embeddings"), "image_embeddings", column)
        table = table.set_column(table.schema.get_field_index("embedding_model"), "embedding_model", names)
        return table, len(bad)

    def __call__(self, batch: dict) -> dict:
        out = {k: [] for k in ("shard", "rows", "skipped", "frames_failed", "rows_without_embeddings", "labels")}
        for src_uri, dst_uri in zip(batch["src"], batch["dst"]):
            table = schema.read_shard(src_uri, endpoint=self.endpoint)
            labels = sorted({x for x in table.column("label").to_pylist() if x})
            if self._up_to_date(table, dst_uri):
                skipped, failed = True, 0
                emb_null = schema.read_shard(dst_uri, ["image_embeddings"], self.endpoint).column(0).null_count
            else:
                table, failed = self.embed_table(table)
                schema.write_shard(table, dst_uri, self.endpoint)
                skipped, emb_null = False, table.column("image_embeddings").null_count
            out["shard"].append(dst_uri)
            out["rows"].append(table.num_rows)
            out["skipped"].append(skipped)
            out["frames_failed"].append(failed)
            out["rows_without_embeddings"].append(emb_null)
            out["labels"].append(json.dumps(labels))
        return out


def text_embeddings_table(labels: list[str], clip_model: str, clip_pretrained: str, clip_config_dir: str | None,
                          prompt_template: str, prompt_ensemble: list[str]):
    """label -> template and prompt-ensemble text embeddings, as a pyarrow table."""
    import pyarrow as pa

    enc = _encoder(clip_model, clip_pretrained, "cpu", clip_config_dir, prompt_template, prompt_ensemble)
    single = enc.encode_text(labels, ensemble=False).numpy().astype(np.float32)
    ens = enc.encode_text(labels, ensemble=True).numpy().astype(np.float32)
    n = len(labels)
    return pa.table({
        "label": pa.array(labels, pa.string()),
        "embedding": pa.array(list(single), pa.list_(pa.float32())),
        "embedding_ensemble": pa.array(list(ens), pa.list_(pa.float32())),
        "prompt_template": pa.array([prompt_template] * n, pa.string()),
        "prompt_ensemble": pa.array([json.dumps(prompt_ensemble)] * n, pa.string()),
        "embedding_model": pa.array([enc.name] * n, pa.string()),
    })


def embed(shards_uri: str, output_uri: str, clip_model: str, clip_pretrained: str, *,
          clip_config_dir: str | None = None, prompt_template: str = "a photo of {}",
          prompt_ensemble: list[str] | None = None, batch_size: int = 256, actors: int | None = None,
          overwrite: bool = False, endpoint: str | None = None, address: str | None = None) -> dict:
    """Run the embedding job; returns counts (also in ``OUTPUT_URI/_embed_manifest.json``).

    ``{shards, shards_skipped, rows, frames_failed, rows_without_embeddings, labels,
    embedding_model, text_embeddings (URI or None), wall_s}``.
    """
    import pyarrow.parquet as pq
    import ray

    endpoint = storage.endpoint_url(endpoint)
    output_uri = storage.normalize_uri(output_uri)
    t0 = time.perf_counter()
    srcs = schema.list_shards(shards_uri, endpoint)
    if not srcs:
        raise FileNotFoundError(f"no shards (*.parquet) under {shards_uri}")
    dsts = [storage.join_uri(output_uri, s.rsplit("/", 1)[-1]) for s in srcs]
    init_ray(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    size = actors or max(1, gpus)
    size = min(size, len(srcs))
    ds = ray.data.from_items([{"src": s, "dst": d} for s, d in zip(srcs, dsts)], override_num_blocks=len(srcs))
    ds = ds.map_batches(
        ShardEmbedder, batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
        fn_constructor_kwargs={"clip_model": clip_model, "clip_pretrained": clip_pretrained,
                               "clip_config_dir": clip_config_dir, "batch_size": batch_size,
                               "endpoint": endpoint, "overwrite": overwrite},
        num_gpus=1 if gpus else 0, num_cpus=1,
    )
    rows = sorted(ds.take_all(), key=lambda r: r["shard"])
    labels = sorted({lab for r in rows for lab in json.loads(r["labels"])})
    text_uri = None
    name = f"{clip_model}:{clip_pretrained}"
    ensemble = list(prompt_ensemble or [])
    if labels:
        text_uri = storage.join_uri(output_uri, schema.TEXT_EMBEDDINGS_NAME)
        make = ray.remote(num_cpus=1)(text_embeddings_table)
        table = ray.get(make.remote(labels, clip_model, clip_pretrained, clip_config_dir, prompt_template, ensemble))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(text_uri, buf.getvalue(), endpoint)
        name = table.column("embedding_model")[0].as_py()
    result = {
        "output_uri": output_uri,
        "shards": len(rows),
        "shards_skipped": sum(bool(r["skipped"]) for r in rows),
        "rows": sum(int(r["rows"]) for r in rows),
        "frames_failed": sum(int(r["frames_failed"]) for r in rows),
        "rows_without_embeddings": sum(int(r["rows_without_embeddings"]) for r in rows),
        "labels": len(labels),
        "embedding_model": name,
        "text_embeddings": text_uri,
        "wall_s": round(time.perf_counter() - t0, 3),
    }
    storage.write_bytes(storage.join_uri(output_uri, schema.EMBED_MANIFEST_NAME),
                       json.dumps({**result, "source": storage.normalize_uri(shards_uri) if isinstance(shards_uri, str)
                                   else None}, indent=1).encode("utf-8"), endpoint)
    return result


def load_text_embeddings(uri: str, ensemble: bool = False, endpoint: str | None = None) -> dict[str, np.ndarray]:
    """``_text_embeddings.parquet`` (or the folder holding it) -> {label: (D,) float32}."""
    import pyarrow.parquet as pq

    if not uri.endswith(".parquet"):
        uri = storage.join_uri(uri, schema.TEXT_EMBEDDINGS_NAME)
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri, endpoint)))
    col = "embedding_ensemble" if ensemble else "embedding"
    return {lab: np.asarray(e, np.float32) for lab, e in zip(table.column("label").to_pylist(),
                                                              table.column(col).to_pylist())}
