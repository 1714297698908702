"""The cluster definitions against the real schemas and against this repository.

KubeRay manifests (cluster/kuberay/*.yaml) validate against the KubeRay v1.7.0 CRDs (the
``kuberay-crds`` folder CI keeps beside the repository, or ``$KUBERAY_CRDS``) made strict
(``additionalProperties: false`` on every object that lists its properties, so a misspelt field
fails); the AWS launcher YAML validates against Ray's
own cluster schema. Then every manifest is held to the repository: the entry points and config
files it names exist, GPUs per worker agree with the jobs' flags and the worker groups, images
carry pyproject's Ray and Python versions, the runtime env and the Serve config are the shared
files, the Serve import path imports, and no secret is written anywhere.
"""
from __future__ import annotations

import copy
import functools
import glob
import importlib
import os
import re
import shlex
import subprocess
import sys

import jsonschema
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLUSTER = os.path.join(ROOT, "cluster")
CRDS = os.environ.get("KUBERAY_CRDS", os.path.join(os.path.dirname(ROOT), "shared", "kuberay-crds"))
MANIFESTS = sorted(glob.glob(os.path.join(CLUSTER, "kuberay", "*.yaml")))
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load(path: str) -> dict:
    with open(path) as f:
        return yaml.load(f, Loader=LOADER)


def strict(schema):
    """A copy of ``schema`` where every object listing ``properties`` forbids other keys."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


@functools.lru_cache(maxsize=None)
def crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    """kind -> a strict validator of its ``ray.io/v1`` schema."""
    out = {}
    paths = glob.glob(os.path.join(CRDS, "ray.io_*.yaml"))
    assert len(paths) == 3, f"the KubeRay CRDs are not in {CRDS} (set KUBERAY_CRDS)"
    for path in paths:
        crd = _load(path)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        out[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(strict(version["schema"]["openAPIV3Schema"]))
    return out


def errors(doc: dict) -> list[str]:
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion {doc.get('apiVersion')!r} is not ray.io/v1"]
    validator = crd_validators()[doc["kind"]]
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def manifests() -> dict[str, dict]:
    return {os.path.basename(p): _load(p) for p in MANIFESTS}


def cluster_specs(doc: dict) -> list[dict]:
    spec = doc["spec"]
    return [s for s in (spec if doc["kind"] == "RayCluster" else spec.get("rayClusterSpec") or
                        spec.get("rayClusterConfig"),) if s]


def pods(doc: dict):
    """(group name, group spec, pod spec) of the head and every worker group of a manifest."""
    for spec in cluster_specs(doc):
        yield "head", spec["headGroupSpec"], spec["headGroupSpec"]["template"]["spec"]
        for g in spec.get("workerGroupSpecs", []):
            yield g["groupName"], g, g["template"]["spec"]


def pod_gpus(pod: dict) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["containers"])


def gpu_capacity(doc: dict) -> tuple[int, int]:
    """(GPUs per pod of the GPU group, GPUs at the group's maxReplicas) of a manifest's cluster."""
    per, total = 0, 0
    for name, group, pod in pods(doc):
        if name != "head" and pod_gpus(pod):
            per = max(per, pod_gpus(pod))
            total += pod_gpus(pod) * group["maxReplicas"]
    return per, total


def _bytes(q: str) -> int:
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(q))
    assert m, f"unreadable quantity {q!r}"
    return int(m.group(1)) << {None: 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40}[m.group(2)]


def jobs() -> dict[str, list[str]]:
    """RayJob file -> its entrypoint's argv."""
    return {n: shlex.split(d["spec"]["entrypoint"]) for n, d in manifests().items() if d["kind"] == "RayJob"}


def option(argv: list[str], flag: str, default=None):
    return argv[argv.index(flag) + 1] if flag in argv else default


def pyproject() -> tuple[str, str]:
    """(Ray's pinned version, requires-python) from pyproject.toml."""
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    return (re.search(r'"ray\[[^\]]*\]==([\d.]+)"', text).group(1),
            re.search(r'requires-python\s*=\s*"([^"]+)"', text).group(1))


# --- schemas -----------------------------------------------------------------------------------------


def test_the_manifests_are_all_here():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in manifests().values())
    assert kinds == [("RayCluster", "clipsep"), *sorted(("RayJob", f"clipsep-{j}") for j in
                     ("embed", "ingest", "separate-archive", "train", "tune")), ("RayService", "clipsep-serve")]


@pytest.mark.parametrize("name", [os.path.basename(p) for p in MANIFESTS])
def test_manifest_validates_against_the_kuberay_crd(name):
    assert errors(manifests()[name]) == []


@pytest.mark.parametrize("path, good, bad", [
    (("spec", "headGroupSpec"), "rayStartParams", "rayStartParam"),
    (("spec", "workerGroupSpecs", 0), "maxReplicas", "maxReplica"),
    (("spec", "headGroupSpec", "template", "spec", "containers", 0), "imagePullPolicy", "imagePullPolicyy"),
    (("spec", "headGroupSpec", "template", "spec", "volumes", 0, "emptyDir"), "sizeLimit", "sizelimit"),
])
def test_a_misspelt_field_fails_validation(path, good, bad):
    doc = copy.deepcopy(manifests()["raycluster.yaml"])
    node = doc
    for k in path:
        node = node[k]
    node[bad] = node.pop(good)
    found = errors(doc)
    assert any(repr(bad) in e for e in found), found
    doc = copy.deepcopy(manifests()["rayjob-train.yaml"])
    doc["spec"]["shutdownAfterJobFinish"] = True
    assert any("shutdownAfterJobFinish" in e for e in errors(doc))
    doc = copy.deepcopy(manifests()["rayjob-train.yaml"])
    doc["spec"]["ttlSecondsAfterFinished"] = "an hour"  # a wrong type fails too
    assert errors(doc)


def launcher_validator():
    import json

    import ray

    with open(os.path.join(os.path.dirname(ray.__file__), "autoscaler", "ray-schema.json")) as f:
        return jsonschema.Draft7Validator(json.load(f))


def test_aws_launcher_yaml_validates_against_rays_schema():
    cfg = _load(os.path.join(CLUSTER, "aws.yaml"))
    v = launcher_validator()
    assert [e.message for e in v.iter_errors(cfg)] == []
    cfg["idle_timeout_minute"] = 5
    assert any("idle_timeout_minute" in e.message for e in v.iter_errors(cfg))


def test_aws_launcher_cpu_head_gpu_spot_workers():
    cfg = _load(os.path.join(CLUSTER, "aws.yaml"))
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU") == 0 and "InstanceMarketOptions" not in head["node_config"]
    assert any("--num-gpus=0" in c for c in cfg["head_start_ray_commands"])
    gpu = [t for n, t in types.items() if re.match(r"(g|p)\d", t["node_config"]["InstanceType"])]
    assert gpu and all(t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot" for t in gpu)
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())


# --- the repository ------------------------------------------------------------------------------


def test_manifests_are_the_render_scripts_output():
    out = subprocess.run([sys.executable, os.path.join(CLUSTER, "kuberay", "render.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _repo_files(argv: list[str]) -> list[str]:
    """Paths in an entrypoint that name repository files: the script and any config or sweep file."""
    return [a for a in argv if re.search(r"\.(py|ya?ml|json)$", a) and "://" not in a]


@pytest.mark.parametrize("name", sorted(jobs()))
def test_job_entrypoint_and_config_files_exist(name):
    argv = jobs()[name]
    assert argv[0] == "python" and argv[1].endswith(".py"), argv
    files = _repo_files(argv)
    assert argv[1] in files
    missing = [f for f in files if not os.path.isfile(os.path.join(ROOT, f))]
    assert not missing, f"{name} names files that are not in the repository: {missing}"


def test_job_entrypoints_parse_with_the_commands_own_parsers():
    """Flags exist: each jobs/<x>.py entrypoint's arguments parse with its command's parser."""
    from clipsep_ray.commands import parse

    for name, argv in jobs().items():
        if not argv[1].startswith("jobs/"):
            continue  # tuning/sweep.py has its own parser (its own tests hold it)
        parse(os.path.basename(argv[1])[:-3].replace("_", "-"), argv[2:])  # SystemExit on an unknown flag


def test_every_job_uses_the_one_runtime_env():
    shared = _load(os.path.join(CLUSTER, "runtime_env.yaml"))
    for name, doc in manifests().items():
        if doc["kind"] == "RayJob":
            spec = doc["spec"]
            assert yaml.safe_load(spec["runtimeEnvYAML"]) == shared, name
            assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0, name
            assert spec["activeDeadlineSeconds"] > 0, name


def test_rayservice_is_the_serve_config():
    serve = _load(os.path.join(CLUSTER, "serve.yaml"))
    doc = manifests()["rayservice.yaml"]
    assert yaml.safe_load(doc["spec"]["serveConfigV2"]) == serve
    (app,) = [a for a in serve["applications"] if a["name"] == "clipsep"]
    assert app["route_prefix"] == "/" and "checkpoint" in app["args"]
    model = {d["name"]: d for d in app["deployments"]}["ClipSepModel"]
    per, total = gpu_capacity(doc)
    gpus = model["ray_actor_options"]["num_gpus"]
    assert 0 < gpus <= per, f"ClipSepModel asks {gpus} GPUs, a worker pod has {per}"
    assert model["autoscaling_config"]["max_replicas"] * gpus <= total


def test_serve_import_path_imports():
    app = _load(os.path.join(CLUSTER, "serve.yaml"))["applications"][0]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_train_jobs_gpus_agree_with_the_worker_group():
    """ScalingConfig(num_workers, use_gpu) asks one GPU per Ray Train worker: the GPU group must
    have GPUs in each pod, room for every worker at minReplicas (no waiting on the autoscaler for
    a run that cannot start without all of them), and the head none."""
    from clipsep_ray.config import load_config

    checked = 0
    for name, doc in manifests().items():
        argv = jobs().get(name, [])
        if not argv or argv[1] != "jobs/train.py":
            continue
        overrides = [a for a in argv[2:] if "=" in a and not a.startswith("-")]
        cfg = load_config(option(argv, "--config", "paper"), overrides)
        assert cfg.train.use_gpu, f"{name}: a GPU cluster job trains on CPUs"
        workers = int(option(argv, "--workers", cfg.train.num_workers))
        per, _ = gpu_capacity(doc)
        (gpu_group,) = [g for n, g, p in pods(doc) if n != "head" and pod_gpus(p)]
        assert per >= 1 and gpu_group["minReplicas"] * per >= workers, (name, workers, per, gpu_group["minReplicas"])
        assert gpu_group["maxReplicas"] * per >= workers
        # ScalingConfig's resources_per_worker CPUs must fit a GPU pod beside its GPU.
        pod_cpus = min(float(c["resources"]["limits"]["cpu"]) for c in gpu_group["template"]["spec"]["containers"])
        assert cfg.run.cpus_per_worker <= pod_cpus, (name, cfg.run.cpus_per_worker, pod_cpus)
        checked += 1
    assert checked == 1


def test_gpu_actor_jobs_fit_the_worker_group():
    for name, argv in jobs().items():
        if argv[1] == "jobs/separate_archive.py":
            need = int(option(argv, "--actors", 1)) * float(option(argv, "--gpus-per-actor", 1))
        elif argv[1] == "jobs/embed.py":
            need = int(option(argv, "--actors", 1))
        else:
            continue
        per, total = gpu_capacity(manifests()[name])
        assert 0 < need <= total, (name, need, total)


def test_head_takes_no_gpu_work_and_shm_holds_the_object_store():
    for name, doc in manifests().items():
        for group, spec, pod in pods(doc):
            params = spec["rayStartParams"]
            if group == "head":
                assert params.get("num-gpus") == "0" and pod_gpus(pod) == 0, name
            (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
            assert shm["emptyDir"]["medium"] == "Memory"
            assert all({"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"] for c in pod["containers"])
            store = int(params["object-store-memory"])
            assert store <= _bytes(shm["emptyDir"]["sizeLimit"]), (name, group)
            memory = min(_bytes(c["resources"]["limits"]["memory"]) for c in pod["containers"])
            assert _bytes(shm["emptyDir"]["sizeLimit"]) < memory, (name, group)


def _images() -> list[tuple[str, str]]:
    out = [(n, c["image"]) for n, d in manifests().items() for _, _, p in pods(d) for c in p["containers"]]
    out.append(("aws.yaml", _load(os.path.join(CLUSTER, "aws.yaml"))["docker"]["image"]))
    base = re.search(r"^FROM\s+(\S+)", open(os.path.join(CLUSTER, "Dockerfile")).read(), re.M).group(1)
    return out + [("Dockerfile", base)]


def test_images_carry_pyprojects_ray_and_python():
    ray_pin, requires = pyproject()
    lowest = tuple(int(x) for x in re.match(r">=\s*(\d+)\.(\d+)", requires).groups())
    pythons = set()
    for where, image in _images():
        m = re.search(r":(\d+\.\d+\.\d+)-py(\d)(\d+)", image)
        assert m, f"{where}: image {image} does not name its Ray and Python versions"
        assert m.group(1) == ray_pin, f"{where}: {image} has Ray {m.group(1)}, pyproject pins {ray_pin}"
        py = (int(m.group(2)), int(m.group(3)))
        assert py >= lowest, f"{where}: {image} has Python {py}, pyproject requires {requires}"
        pythons.add(py)
    assert len(pythons) == 1, f"images disagree on Python: {pythons}"
    for name, doc in manifests().items():
        for spec in cluster_specs(doc):
            assert spec["rayVersion"] == ray_pin, name


def _env_entries(node):
    if isinstance(node, dict):
        if "env" in node and isinstance(node["env"], list):
            yield from node["env"]
        for v in node.values():
            yield from _env_entries(v)
    elif isinstance(node, list):
        for v in node:
            yield from _env_entries(v)


def test_no_secret_in_any_file():
    envs = list(_env_entries(list(manifests().values())))
    assert envs
    for e in envs:
        if re.search(r"KEY|SECRET|TOKEN|PASSWORD|STORAGE", e["name"]):
            assert "value" not in e and ("secretKeyRef" in e["valueFrom"]), e
    for name, doc in manifests().items():
        for _, _, pod in pods(doc):
            assert pod.get("serviceAccountName"), f"{name}: no service account for a cloud identity"
    for path in glob.glob(os.path.join(CLUSTER, "**", "*"), recursive=True):
        if os.path.isfile(path):
            text = open(path, errors="replace").read()
            assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
            assert not re.search(r"aws_secret_access_key\s*[:=]\s*\S", text, re.I), path
            assert not re.search(r"\w+://[^\s/:@'\"]+:[^\s/@'\"]+@", text), f"{path}: a URL with a password"
