"""Shards -> shards with frozen-CLIP frame embeddings (a Ray Data actor pool), plus the text
embeddings of the shards' labels (_text_embeddings.parquet) when they have labels.

Exit status 1 when some rows got no embeddings (their frames did not decode).
"""
from __future__ import annotations

import argparse

from clipsep_ray.commands import options

HELP = "add frozen CLIP image embeddings to shards (Ray Data)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards_uri")
    p.add_argument("output_uri", help="output folder (may equal SHARDS_URI: shards are rewritten in place)")
    options.add_config(p, ": default CLIP model, weights and prompts")
    p.add_argument("--clip-model", help="open_clip model name (default: the config's query.clip_model)")
    p.add_argument("--clip-pretrained", help="open_clip tag or local/remote checkpoint (default: the config's)")
    p.add_argument("--clip-config-dir", help="folder of extra open_clip model configs (JSON), reachable by workers")
    p.add_argument("--batch-size", type=int, default=256, help="frames per model call")
    options.add_actors(p, None, "default: one per GPU, else 1")
    p.add_argument("--overwrite", action="store_true", help="recompute shards that are already embedded")
    options.add_endpoint(p)
    options.add_address(p)


def execute(args: argparse.Namespace) -> dict:
    from clipsep_ray.data.embed import embed

    q = options.load(args).query
    return embed(args.shards_uri, args.output_uri, args.clip_model or q.clip_model,
                 q.clip_pretrained if args.clip_pretrained is None else args.clip_pretrained,
                 clip_config_dir=args.clip_config_dir, prompt_template=q.prompt_template,
                 prompt_ensemble=q.prompt_ensemble, batch_size=args.batch_size, actors=args.actors,
                 overwrite=args.overwrite, endpoint=args.endpoint_url, address=args.address)


def run(args: argparse.Namespace) -> int:
    result = execute(args)
    options.print_json(result)
    missing = result["rows_without_embeddings"]
    if missing:
        print(f"{missing} rows have no embeddings (no frame decoded); training and evaluation skip them")
    return 1 if missing else 0
