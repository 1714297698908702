"""``build_app``: the Serve application from a config's args (a Serve config file or the CLI).

Args (all but ``checkpoint`` optional): ``checkpoint``; the :class:`~.limits.Limits`
(``max_upload_mb``, ``max_seconds``, ``max_batch_size``, ``batch_wait_s``,
``max_queued_requests``, ``cache_mb``, ``temp_mb``); ``device`` (cpu | cuda | auto: a GPU when the
replica reserved one);
``replicas`` (a number, or ``auto`` for autoscaling between ``min_replicas`` and
``max_replicas``); ``num_cpus`` / ``num_gpus`` per model replica; ``ingress_replicas`` (the HTTP
side: reading, decoding and encoding audio, in Python, one core at most each; a GPU replica
answers faster than one ingress feeds it) and ``ingress_cpus``;
``max_ongoing_requests`` (default: twice the batch size, at least 8); ``temp_dir``; ``allow_uris`` (the
object-storage prefixes separate-uri may read and write, a list or comma-separated; none: it is off).
The bearer token comes from the ``CLIPSEP_TOKEN`` environment variable only: a token in
the args (hence in a config file) is refused. A deployment's options in a Serve config
file (``deployments:``) take precedence over these.
"""
from __future__ import annotations

import os

from clipsep_ray.serve.limits import Limits, uri_prefixes

APP_NAME = "clipsep"
OPTIONS = {"checkpoint", "device", "replicas", "min_replicas", "max_replicas", "num_cpus", "num_gpus",
           "ingress_replicas", "ingress_cpus", "max_ongoing_requests", "temp_dir", "allow_uris"}


def deployment_options(args: dict, limits: Limits) -> dict:
    """``.options(...)`` of the model deployment from the args."""
    ongoing = int(args.get("max_ongoing_requests") or max(8, 2 * limits.max_batch_size))
    if ongoing < limits.max_batch_size:  # Serve would then cap every batch below max_batch_size
        raise ValueError(f"max_ongoing_requests ({ongoing}) must be at least max_batch_size ({limits.max_batch_size})")
    opts = {"max_ongoing_requests": ongoing, "max_queued_requests": limits.max_queued_requests,
            "ray_actor_options": {"num_cpus": float(args.get("num_cpus", 1)), "num_gpus": float(args.get("num_gpus", 0))},
            "health_check_period_s": 10, "health_check_timeout_s": 30}
    replicas = args.get("replicas", 1)
    if str(replicas) == "auto":
        opts["autoscaling_config"] = {"min_replicas": int(args.get("min_replicas", 1)),
                                      "max_replicas": int(args.get("max_replicas", 4)),
                                      "target_ongoing_requests": max(2, limits.max_batch_size)}
    else:
        opts["num_replicas"] = int(replicas)
        if opts["num_replicas"] < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas!r}")
    return opts


def build_app(args: dict):
    """The ``clipsep`` application: ``ClipSepIngress`` bound to ``ClipSepModel``."""
    from ray import serve

    from clipsep_ray.serve.ingress import ClipSepIngress
    from clipsep_ray.serve.model import ClipSepModel

    args = dict(args or {})
    if "token" in args:
        raise ValueError("the bearer token is read from the CLIPSEP_TOKEN environment variable, not from the args "
                         "(a config file would hold it in clear)")
    if not args.get("checkpoint"):
        raise ValueError("serve needs a 'checkpoint' argument (a checkpoint URI)")
    unknown = set(args) - OPTIONS - {f for f in Limits().as_dict()}
    if unknown:
        raise ValueError(f"unknown serve arguments: {', '.join(sorted(unknown))}")
    limits = Limits.from_args(args)
    model = serve.deployment(ClipSepModel, name="ClipSepModel").options(**deployment_options(args, limits))
    ingress_replicas = int(args.get("ingress_replicas", 1))
    if ingress_replicas < 1:
        raise ValueError(f"ingress_replicas must be at least 1, got {ingress_replicas}")
    ingress = ClipSepIngress.options(name="ClipSepIngress", max_ongoing_requests=256, num_replicas=ingress_replicas,
                                     ray_actor_options={"num_cpus": float(args.get("ingress_cpus", 0.5))})
    model = model.bind(args["checkpoint"], args.get("device", "auto"), limits.as_dict(), args.get("temp_dir"))
    return ingress.bind(model, limits.as_dict(), os.environ.get("CLIPSEP_TOKEN") or None, args.get("temp_dir"),
                        uri_prefixes(args.get("allow_uris")))
