"""cluster/serve.yaml is a valid Serve config for the one application build_app makes; the
limits and the builder refuse what they should (no Ray cluster needed)."""
from __future__ import annotations

import argparse
import os

import pytest
import yaml

from clipsep_ray.serve.limits import ApiError, Limits, check_bool, check_format, check_query_list

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_serve_yaml_is_a_valid_config_for_build_app():
    from ray.serve.schema import ServeDeploySchema

    from clipsep_ray.serve.app import build_app

    with open(os.path.join(ROOT, "cluster", "serve.yaml")) as fh:
        raw = yaml.safe_load(fh)
    config = ServeDeploySchema.model_validate(raw)
    (app,) = config.applications
    assert (app.name, app.route_prefix, app.import_path) == ("clipsep", "/", "clipsep_ray.serve.app:build_app")
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"ClipSepIngress", "ClipSepModel"}
    model = deployments["ClipSepModel"]
    assert model.autoscaling_config and model.max_ongoing_requests >= app.args["max_batch_size"]
    assert "token" not in app.args
    assert build_app(app.args) is not None  # every arg is known (the checkpoint is read by the replicas)


def test_build_app_refuses_a_token_in_the_args_and_unknown_args():
    from clipsep_ray.serve.app import build_app

    with pytest.raises(ValueError, match="CLIPSEP_TOKEN"):
        build_app({"checkpoint": "x", "token": "t"})
    with pytest.raises(ValueError, match="unknown serve arguments: colour"):
        build_app({"checkpoint": "x", "colour": "red"})
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        build_app({"checkpoint": "x", "max_batch_size": 16, "max_ongoing_requests": 4})
    with pytest.raises(ValueError, match="checkpoint"):
        build_app({})
    with pytest.raises(ValueError, match="ingress_replicas must be at least 1"):
        build_app({"checkpoint": "x", "ingress_replicas": 0})


def test_the_http_side_scales_apart_from_the_model():
    from clipsep_ray.commands.serve import add_arguments, app_args
    from clipsep_ray.serve.app import build_app

    assert build_app({"checkpoint": "x"})._bound_deployment.num_replicas == 1
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = app_args(p.parse_args(["--checkpoint", "x", "--ingress-replicas", "3", "--replicas", "2"]))
    ingress = build_app(args)._bound_deployment
    assert ingress.name == "ClipSepIngress" and ingress.num_replicas == 3
    model = ingress.init_args[0]._bound_deployment  # the model application the ingress is bound to
    assert model.name == "ClipSepModel" and model.num_replicas == 2
    assert args["checkpoint"] == os.path.abspath("x")  # a replica's working folder need not be the shell's
    assert app_args(p.parse_args(["--checkpoint", "s3://b/m.pt"]))["checkpoint"] == "s3://b/m.pt"


def test_auto_takes_a_gpu_only_when_the_replica_reserved_one_and_temp_dir_reaches_the_model():
    from clipsep_ray.serve.app import build_app
    from clipsep_ray.serve.model import replica_device

    assert replica_device("auto", []) == "cpu"  # GPUs it can see but did not reserve are not its own
    assert replica_device("auto", [0]) == "cuda" and replica_device("auto", ["GPU-1"]) == "cuda"
    assert replica_device("cuda", []) == "cuda" and replica_device("cpu", [0]) == "cpu"  # an explicit one is kept
    model = build_app({"checkpoint": "x", "temp_dir": "/big"})._bound_deployment.init_args[0]._bound_deployment
    assert model.init_args[1] == "auto" and model.init_args[3] == "/big"  # separate-uri's area goes there too


def test_limits_and_checks():
    assert Limits.from_args({"max_upload_mb": "2", "max_batch_size": 4}).max_upload_mb == 2.0
    for bad in (-1, "inf", "nan"):  # inf and nan passed, and then every upload was a 500
        with pytest.raises(ValueError, match="max_seconds"):
            Limits.from_args({"max_seconds": bad})
    assert check_query_list([" dog ", "rain"]) == ["dog", "rain"]
    for bad, code in [([], "no_query"), (["a", "a"], "repeated_query"), (["Dog!", "dog"], "clashing_queries")]:
        with pytest.raises(ApiError) as err:
            check_query_list(bad)
        assert (err.value.status, err.value.code) == (422, code)
    assert check_format(None) == "wav" and check_bool("residual", "false") is False
    with pytest.raises(ApiError):
        check_format("ogg")
