"""``clipsep-ray demo``: the whole flow on the synthetic world, embedded defaults, CPU.

world (MP4 + index.csv) -> small CLIP -> ingest (Ray Data) -> embed (Ray Data actors)
-> train ``tiny`` with IMAGE queries only, no labels (Ray Train, 2 workers)
-> evaluate with TEXT queries (and image queries, mixture and oracle bounds)
-> separate a few test mixtures -> OUT/index.html with the table, stems and spectrograms.

Every stage is cached by its own manifest, so a second run only redoes what changed.
Ray's logical CPUs are planned so training workers never starve Ray Data
(``run.cpus_per_worker`` = 0.5 each: two workers leave a CPU for data tasks).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Sequence

from clipsep_ray.config import load_config


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_demo(out: str = "demo-out", *, storage: str | None = None, address: str | None = None, clips: int = 360,
             test_clips: int = 60, steps: int = 2100, workers: int = 2, clip_steps: int | None = None,
             clip_pictures: int | None = None, examples: int = 3, seed: int = 0,
             overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The whole flow (see the module docstring); returns what ``OUT/demo.json`` holds."""
    from clipsep_ray.evaluation import evaluate_checkpoint
    from clipsep_ray.evaluation.protocol import markdown_table
    from clipsep_ray.train.trainer import train

    t_start = time.time()
    out = os.path.abspath(out)
    store = (storage or os.path.join(out, "store")).rstrip("/")
    os.makedirs(out, exist_ok=True)
    timings: dict[str, float] = {}  # finished stages only: stage -> seconds
    started: dict[str, float] = {}

    def stage(name: str):
        started[name] = time.time()
        _log(name)

    def done(name: str):
        timings[name] = round(time.time() - started.pop(name), 1)

    stage("data")
    data = prepare_world(out, store, split="clean", clips=clips, test_clips=test_clips, seed=seed,
                         clip_steps=clip_steps, clip_pictures=clip_pictures, address=address)
    done("data")
    # The best checkpoint is judged on every validation clip (one mixture each): 24 pairs were a
    # noisy judge (issue 14), and 60 cost about 2 s more per validation. Three validations (every
    # steps // 3), not six: each costs ~10 s on 2 cores, and in every planned-pass demo run (seeds
    # 1, 2, 3) the last step was the best of six, so three pick the same checkpoint.
    cfg = load_config("tiny", [f"query.clip_pretrained={data['clip_checkpoint']}", f"train.max_steps={steps}",
                               f"train.decay_steps={steps}", f"train.num_workers={workers}",
                               f"train.seed={seed}", f"run.storage_path={store}/runs", "run.name=demo",
                               f"train.checkpoint_every={max(1, steps // 3)}",
                               f"data.train_uri={data['train']}", f"data.val_uri={data['val']}",
                               f"data.val_clips={test_clips}"] + list(overrides))

    # 4. train with image queries only (labels are never read: train.mode=image).
    stage("train")
    summary = train(cfg)
    done("train")
    best = summary["best_checkpoint"] or summary["latest_checkpoint"]
    ckpt_dir = os.path.join(out, "checkpoints", "best")
    _copy_checkpoint(best, ckpt_dir)
    _log(f"best checkpoint {best} -> {ckpt_dir}")

    # 5. evaluate on the test set with text (prompt ensemble) and image queries.
    stage("evaluate")
    evaluation = evaluate_checkpoint(ckpt_dir, data["test"], out, train_data="clean")
    rows = evaluation.summary
    done("evaluate")
    table = markdown_table(rows)
    print(table)

    # 6. example separations and the report page.
    stage("report")
    shown = _examples(ckpt_dir, data["test"], out, examples, evaluation.per_clip)
    done("report")
    _write_report(out, table, shown, timings, time.time() - t_start)
    result = {"out": out, "checkpoint": ckpt_dir, "results": rows, "timings_s": timings,
              "total_s": round(time.time() - t_start, 1), "counts": data["counts"]}
    with open(os.path.join(out, "demo.json"), "w") as fh:
        json.dump(result, fh, indent=1, default=str)
    _log(f"done in {result['total_s']} s: open {os.path.join(out, 'index.html')}")
    return result


def prepare_world(out: str, store: str, *, split: str = "clean", clips: int = 360, test_clips: int = 60,
                  seed: int = 0, clip_steps: int | None = None, clip_pictures: int | None = None,
                  address: str | None = None, sample_rate: int | None = None) -> dict[str, Any]:
    """The synthetic world (``split`` clean or noisy) as embedded shards, each stage cached.

    World videos and the small CLIP are cached under OUT/cache; shards under STORE/<split>/.
    Returns the shard URIs (train, val, test), the CLIP checkpoint and per-stage counts.
    """
    from clipsep_ray.synth.clip import ensure_clip
    from clipsep_ray.synth.videos import ensure_world

    tiny = load_config("tiny")
    world = ensure_world(os.path.join(out, "cache", f"world-{split}"), clips=clips, seed=seed, split=split,
                         val_clips=test_clips, test_clips=test_clips)
    _log(f"world ({split}): {world['counts']} clips ({'cached' if world['cached'] else 'generated'})")
    clip_kw = {k: v for k, v in (("steps", clip_steps), ("train_per_class", clip_pictures),
                                 ("heldout_per_class", clip_pictures and max(2, clip_pictures // 4))) if v}
    clip = ensure_clip(os.path.join(out, "cache", "clip"), seed=seed, **clip_kw)
    _log(f"small CLIP: zero-shot accuracy {clip.get('zero_shot_accuracy')} "
         f"({'cached' if clip['cached'] else 'trained'})")
    from clipsep_ray.runtime import init_ray

    init_ray(address)
    from clipsep_ray.data.embed import embed
    from clipsep_ray.data.ingest import IngestOptions, ingest

    result: dict[str, Any] = {"clip_checkpoint": clip["checkpoint"], "clip_accuracy": clip.get("zero_shot_accuracy"),
                              "counts": {}}
    for subset in ("train", "val", "test"):
        shards, embedded = f"{store}/{split}/shards/{subset}", f"{store}/{split}/embedded/{subset}"
        got = ingest(None, shards, IngestOptions(sample_rate=sample_rate or tiny.audio.sample_rate),
                     index=os.path.join(world["out_dir"], f"{subset}.csv"))
        result["counts"][f"ingest_{subset}"] = got
        result["counts"][f"embed_{subset}"] = embed(shards, embedded, tiny.query.clip_model, clip["checkpoint"],
                                                    prompt_template=tiny.query.prompt_template,
                                                    prompt_ensemble=tiny.query.prompt_ensemble)
        result[subset] = embedded
        _log(f"{split}/{subset}: {got.get('clips_written')} clips written, {got.get('files_rejected')} files rejected")
    return result


def _copy_checkpoint(uri: str, dest: str) -> None:
    from clipsep_ray.models.checkpoint import FILENAME
    from clipsep_ray.storage import url_to_fs

    fs, path = url_to_fs(uri)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    os.makedirs(dest)
    fs.get(path.rstrip("/") + "/" + FILENAME, os.path.join(dest, FILENAME))


def _examples(ckpt_dir: str, test_uri: str, out: str, count: int, per_clip: list[dict]) -> list[dict]:
    """Re-create the evaluation's text-query mixtures whose SDRi lies nearest the median (one per
    class), separate them with the target's class name as text query, and draw them."""
    import numpy as np

    from clipsep_ray.audio.io import write_audio
    from clipsep_ray.data.shards import eval_rows
    from clipsep_ray.evaluation.protocol import eval_pairs
    from clipsep_ray.report import near_median, spectrogram_png
    from clipsep_ray.separate import Separator
    from clipsep_ray.storage import slug

    sep = Separator.from_checkpoint(ckpt_dir)
    rows = eval_rows(test_uri, sep.cfg)
    sr = sep.cfg.audio.sample_rate
    labels = rows["label"]
    pairs = eval_pairs(len(labels), labels=labels)  # the evaluation's own mixtures
    index = {cid: i for i, cid in enumerate(rows["clip_id"])}
    text = [r for r in per_clip if r["query_kind"] == "text" and r["clip_id"] in index]
    median = float(np.median([r["sdri"] for r in text])) if text else None
    examples = []
    for record in near_median(text, count):
        i = index[record["clip_id"]]
        j = int(pairs[i])
        target, other = rows["audio"][i] / 2, rows["audio"][j] / 2
        mixture = (target + other).astype(np.float32)
        query = labels[i]
        stems = sep.separate(mixture, sr, [query])
        name = f"example{len(examples) + 1}_{slug(query)}"
        d = os.path.join(out, "examples", name)
        items = [("mixture", mixture), (f"estimate: \"{query}\"", stems[query]), ("residual", stems["residual"]),
                 (f"reference: {query}", target), (f"reference: {labels[j]} (interference)", other)]
        ref = None
        table = []
        for k, (caption, wave) in enumerate(items):
            base = f"{k}_{slug(caption.split(':')[0])}"
            write_audio(os.path.join(d, base + ".wav"), wave, sr)
            ref = spectrogram_png(wave, sr, os.path.join(d, base + ".png"), ref=ref, title=caption)
            table.append({"caption": caption, "audio": f"examples/{name}/{base}.wav",
                          "picture": f"examples/{name}/{base}.png"})
        examples.append({"name": name, "query": query, "rows": table, "sdri": float(record["sdri"]),
                         "median_sdri": median, "clip_id": record["clip_id"]})
    return examples


def _write_report(out: str, table: str, examples: list[dict], timings: dict[str, float], total: float) -> None:
    from clipsep_ray.report import html_page

    notes = ["Trained on the synthetic world with IMAGE queries only (no labels); evaluated with TEXT queries "
             "(prompt ensemble) and image queries on held-out test mixtures, beside the unprocessed mixture and "
             "the oracle ideal binary / ratio masks.",
             f"Total {total:.0f} s. The examples are the text-query test mixtures whose SDRi lies nearest the "
             "median, one per class."]
    page = html_page("clipsep-ray demo", table, examples, notes, timings=timings)
    with open(os.path.join(out, "index.html"), "w") as fh:
        fh.write(page)
