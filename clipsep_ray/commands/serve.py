"""Serve the model over HTTP with Ray Serve until interrupted (Ctrl-C shuts down cleanly).

The API (POST /v1/separate, /v1/separations/{id}, /v1/separate-uri; GET /healthz, /v1/info,
OpenAPI at /docs) and a web page at / answer on --host:--port. The model replicas batch the
windows of concurrent requests (--max-batch-size, --batch-wait-s). With --token (or the
CLIPSEP_TOKEN environment variable) every /v1 call needs 'Authorization: Bearer TOKEN'.
The same application runs from a Serve config file: serve run cluster/serve.yaml.
"""
from __future__ import annotations

import argparse
import os
import sys

from clipsep_ray.commands import options

HELP = "serve the model over HTTP (API + web page) with Ray Serve"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="URI", help="model checkpoint (file or folder; local or s3://)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--replicas", default="1", metavar="N",
                   help="model replicas: a number, or 'auto' to autoscale from 1 to --max-replicas (default: 1)")
    p.add_argument("--max-replicas", type=int, default=4, help="upper bound with --replicas auto (default: 4)")
    p.add_argument("--ingress-replicas", type=int, default=1, metavar="N",
                   help="HTTP replicas that read, decode and encode the audio (default: 1; more for GPU replicas)")
    p.add_argument("--max-batch-size", type=int, default=16, metavar="N",
                   help="requests whose windows share one U-Net call (default: 16; 1 turns batching off)")
    p.add_argument("--batch-wait-s", type=float, default=0.01, metavar="S",
                   help="how long a batch waits for more requests (default: 0.01)")
    p.add_argument("--max-upload-mb", type=float, default=100.0, metavar="N", help="upload limit (default: 100)")
    p.add_argument("--max-seconds", type=float, default=600.0, metavar="S",
                   help="longest audio an upload may hold (default: 600; above 48 kHz proportionally less)")
    p.add_argument("--max-queued-requests", type=int, default=64, metavar="N",
                   help="requests waiting per model replica before 503s (default: 64)")
    p.add_argument("--cache-mb", type=float, default=512.0, metavar="N",
                   help="U-Net features kept per replica for re-queries (default: 512)")
    p.add_argument("--token", default=None, help="bearer token the /v1 calls need (default: CLIPSEP_TOKEN, else none)")
    p.add_argument("--allow-uri", action="append", default=[], metavar="PREFIX",
                   help="an object-storage prefix /v1/separate-uri may read from and write to, e.g. s3://bucket/jobs/ "
                        "(repeatable; none: that endpoint is off)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per model replica (default: 1)")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per model replica (default: 0)")
    options.add_device(p)
    options.add_address(p)


def app_args(args: argparse.Namespace) -> dict:
    """The ``build_app`` args for these options (the token travels in the environment)."""
    from clipsep_ray.storage import normalize_uri

    # absolute: a replica's working folder need not be this shell's
    return {"checkpoint": normalize_uri(args.checkpoint), "device": args.device, "replicas": args.replicas,
            "max_replicas": args.max_replicas, "ingress_replicas": args.ingress_replicas,
            "max_batch_size": args.max_batch_size,
            "batch_wait_s": args.batch_wait_s, "max_upload_mb": args.max_upload_mb, "max_seconds": args.max_seconds,
            "max_queued_requests": args.max_queued_requests, "cache_mb": args.cache_mb,
            "num_cpus": args.num_cpus, "num_gpus": args.num_gpus, "allow_uris": list(args.allow_uri)}


def run(args: argparse.Namespace) -> int:
    import threading

    if args.token:
        os.environ["CLIPSEP_TOKEN"] = args.token  # before Ray starts, so a local cluster's replicas see it
    from ray import serve

    from clipsep_ray.runtime import init_ray
    from clipsep_ray.separate import Separator
    from clipsep_ray.serve.app import APP_NAME, build_app
    from clipsep_ray.serve.model import check_servable

    try:
        application = build_app(app_args(args))
        # Here, before Ray starts: a checkpoint that is missing, corrupt or of a fixed-output model
        # would otherwise fail in every replica, and serve.run would show their tracebacks. Not with
        # --address (or RAY_ADDRESS): a cluster's replicas may read paths this machine cannot.
        if args.address is None and not os.environ.get("RAY_ADDRESS"):
            check_servable(Separator.from_checkpoint(args.checkpoint, device="cpu"), args.checkpoint)
    except (ValueError, OSError, ImportError) as exc:  # ImportError: gs:// or az:// without their library
        print(f"error: {exc}", file=sys.stderr)
        return 2
    init_ray(args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    try:
        serve.run(application, name=APP_NAME, route_prefix="/")
        print(f"serving on http://{args.host}:{args.port}/ (Ctrl-C to stop)", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        print("shutting down", file=sys.stderr)
    finally:
        serve.shutdown()
    return 0
