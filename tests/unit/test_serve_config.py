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


def test_separate_uri_only_under_the_prefixes_the_server_was_started_with():
    from clipsep_ray.serve.limits import ApiError, check_uri_job, uri_prefixes

    allowed = uri_prefixes("s3://jobs/in/, S3A://jobs/out")
    assert allowed == ["s3://jobs/in/", "s3a://jobs/out"]

    def code(src: str, dest: str, prefixes=allowed) -> str | None:
        try:
            check_uri_job(src, dest, prefixes)
        except ApiError as exc:
            return f"{exc.status} {exc.code}"
        return None

    assert code("s3://jobs/in/a.wav", "s3://jobs/out/a") is None
    assert code("s3a://jobs/in/a.wav", "s3://jobs/out/deeper/a") is None  # s3a:// is s3://
    assert code("s3://jobs/in/a.wav", "s3://jobs/out/a", []) == "403 uri_jobs_disabled"
    assert code("s3://private/call.wav", "s3://jobs/out/a") == "403 uri_not_allowed"
    assert code("s3://jobs/in/a.wav", "s3://jobs/outer/a") == "403 uri_not_allowed"  # a prefix ends at a '/'
    assert code("s3://jobs/in/a.wav", "s3://jobs/out/o8?versionId=a") == "422 bad_uri"
    assert code("s3://jobs/in/../x.wav", "s3://jobs/out/a") == "422 bad_uri"
    assert code("file:///etc/passwd", "s3://jobs/out/a") == "422 bad_uri"
    assert code("S3://jobs/in/a.wav", "s3://jobs/out") is None  # schemes are case-insensitive; the prefix itself
    assert code("S3://private/a.wav", "s3://jobs/out/a") == "403 uri_not_allowed"
    assert code("gcs://b/in/a.wav", "s3://jobs/out/a", uri_prefixes(["gs://b/in", "s3://jobs/out"])) is None
    assert uri_prefixes("") == [] and uri_prefixes(None) == []
    for bad in ("/tmp/x", "s3://jobs/in?x=1", "http://host/x"):
        with pytest.raises(ValueError, match="allow_uris"):
            uri_prefixes([bad])


def test_uploads_keep_a_known_extension_for_the_decoder(tmp_path):
    """An extensionless MP3 went to libsndfile, which stops a joined MP3 at its first part."""
    from clipsep_ray.serve.limits import _with_extension

    for client_name, suffix in ((b"song.MP3", ".mp3"), (b"clip.mp4", ".mp4"), (b"evil.exe", ""), (b"noext", ""),
                                (None, ""), (b"a.wav/../x", "")):
        path = tmp_path / f"tmp{len(suffix)}{client_name!r:.4}"
        path.write_bytes(b"x")
        got = _with_extension(str(path), client_name)
        assert got == str(path) + suffix and os.path.exists(got)


def test_models_without_text_queries_are_refused_at_start():
    from types import SimpleNamespace

    from clipsep_ray.config import load_config
    from clipsep_ray.models.registry import build_model
    from clipsep_ray.serve.model import check_servable

    for arch, named in (("labelsep", "LabelSep model, queried by label ids"), ("pit", "fixed sources")):
        model = build_model(load_config("tiny", [f"model.arch={arch}", "model.num_labels=3"]).model)
        with pytest.raises(ValueError, match=named):
            check_servable(SimpleNamespace(model=model), "m.pt")


def test_an_internal_error_answers_an_id_not_its_text():
    import asyncio
    import json

    from clipsep_ray.serve.ingress import _unexpected

    resp = asyncio.run(_unexpected(None, RuntimeError("Traceback ... /home/svc/secret.py, 10.0.0.7")))
    body = json.loads(resp.body)["error"]
    assert resp.status_code == 500 and body["code"] == "internal" and "secret" not in body["message"]
    assert body["message"].startswith("internal error ") and "RuntimeError" in body["message"]


def test_an_analysis_is_kept_for_re_queries_only_while_it_fits_the_cache():
    """Keeper holds the batches as they stream through the synthesis; past the cache's size it holds
    none (an upload too long to be cached was held whole all the same: 990 MB for 10 minutes)."""
    import numpy as np
    import torch

    from clipsep_ray.config import load_config
    from clipsep_ray.models.registry import build_model
    from clipsep_ray.separate import Analysis, Separator
    from clipsep_ray.serve.model import KeepBudget, Keeper

    cfg = load_config("tiny", ["model.num_masks=4", "inference.precision=fp32"])
    sep = Separator(build_model(cfg.model), cfg, device="cpu")
    wave = np.random.default_rng(0).standard_normal(8000 * 6).astype(np.float32) * 0.1
    emb = torch.randn(1, cfg.model.embed_dim)
    whole = sep.analyse(wave, 8000).kept()

    def keeping(budget):
        lazy = sep.analyse(wave, 8000)
        return Analysis(lazy.wave, lazy.sample_rate, Keeper(lazy.batches, budget))

    for max_bytes, kept in ((whole.nbytes, True), (whole.nbytes // 3, False)):
        budget = KeepBudget(max_bytes)
        analysis = keeping(budget)
        stems = sep.synthesise(analysis, emb)
        np.testing.assert_allclose(stems["residual"], sep.synthesise(whole, emb)["residual"], atol=1e-6)
        got = analysis.batches.kept(analysis)
        assert (got is not None) == kept and budget.used == 0  # kept: the cache counts its bytes now
        if kept:
            assert got.nbytes == whole.nbytes
    # The budget is the replica's, over its requests in flight: two that would each fit do not both.
    budget = KeepBudget(whole.nbytes)
    first, second = keeping(budget), keeping(budget)
    for a, b in zip(first.batches, second.batches):  # two requests' syntheses side by side
        pass
    assert [first.batches.kept(first) is not None, second.batches.kept(second) is not None] == [True, False]
    assert budget.used == 0


def test_a_dead_replicas_temporary_area_is_removed_by_the_next_one(tmp_path):
    """A killed replica's uploads stayed on disk for good, outside every area's count."""
    import socket
    import subprocess
    import sys

    from clipsep_ray.serve.limits import TempArea

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    gone = tmp_path / f"clipsep-serve-{host}-{dead.stdout.strip()}-abc123"
    live = tmp_path / f"clipsep-serve-{host}-{os.getpid()}-def456"
    elsewhere = tmp_path / f"clipsep-serve-another-host-{dead.stdout.strip()}-ghi789"
    for folder in (gone, live, elsewhere):
        (folder / "req").mkdir(parents=True)
        (folder / "req" / "upload").write_bytes(b"x" * 1000)
    area = TempArea(str(tmp_path), 10**6)
    assert not gone.exists() and live.exists() and elsewhere.exists()  # only this host's dead ones
    assert os.path.basename(area.root).startswith(f"clipsep-serve-{host}-{os.getpid()}-")
    area.close()
