"""Writes the KubeRay manifests in this folder from one cluster definition.

    python cluster/kuberay/render.py          # rewrite cluster/kuberay/*.yaml
    python cluster/kuberay/render.py --check  # exit 1 if a committed manifest differs

One RayCluster spec (a CPU head that takes no GPU work, a CPU worker group for data stages and a
GPU worker group, autoscaled) is shared by the standing RayCluster, every RayJob's own cluster
and the RayService, so image, credentials and shared memory cannot drift between them. Every
RayJob's runtimeEnvYAML is cluster/runtime_env.yaml verbatim and the RayService's serveConfigV2
is cluster/serve.yaml verbatim. Edit here (or those two files), then render; the tests check that
the committed manifests are this script's output.
"""
from __future__ import annotations

import copy
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER = os.path.dirname(HERE)
IMAGE = "clipsep-ray:2.60.0-py311-gpu"  # built from cluster/Dockerfile
BUCKET = "s3://my-bucket"
SERVICE_ACCOUNT = "clipsep-ray"  # bind a cloud identity to it (EKS IRSA / GKE Workload Identity) ...
SECRET = "clipsep-s3"  # ... or create this Secret: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (both optional)
CONFIG_MAP = "clipsep-storage"  # AWS_ENDPOINT_URL (S3-compatible stores), AWS_DEFAULT_REGION (optional)
DB_SECRET = "clipsep-optuna"  # OPTUNA_STORAGE: the sweep study's postgresql:// URL, password included


def _env() -> list[dict]:
    """Storage settings from a Secret and a ConfigMap, all optional: with a cloud identity on the
    service account neither needs to exist and boto3/pyarrow find the pod's web identity."""
    env = [{"name": k, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": k, "optional": True}}}
           for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    env += [{"name": k, "valueFrom": {"configMapKeyRef": {"name": CONFIG_MAP, "key": k, "optional": True}}}
            for k in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")]
    env.append({"name": "OPTUNA_STORAGE",
                "valueFrom": {"secretKeyRef": {"name": DB_SECRET, "key": "OPTUNA_STORAGE", "optional": True}}})
    return env


def _pod(container: str, cpu: int, memory_gi: int, shm_gi: int, gpus: int = 0, ports: list | None = None) -> dict:
    limits = {"cpu": str(cpu), "memory": f"{memory_gi}Gi", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    c = {"name": container, "image": IMAGE, "imagePullPolicy": "IfNotPresent", "env": _env(),
         "resources": {"limits": limits, "requests": dict(limits)},
         "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    if ports:
        c["ports"] = ports
    spec = {"serviceAccountName": SERVICE_ACCOUNT, "containers": [c],
            # Ray's object store lives in /dev/shm; Docker's default of 64 MiB would spill everything.
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gi}Gi"}}]}
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": spec}


def _gib(n: int) -> str:
    return str(n << 30)


def cluster_spec(gpu_workers: tuple[int, int, int] = (0, 0, 4), cpu_workers: tuple[int, int, int] = (0, 0, 8)) -> dict:
    """RayCluster spec; worker groups as (replicas, minReplicas, maxReplicas)."""
    head_ports = [{"containerPort": p, "name": n} for p, n in
                  ((6379, "gcs-server"), (8265, "dashboard"), (10001, "client"), (8000, "serve"))]
    groups = []
    for name, (replicas, lo, hi), pod, shm in (
            ("cpu", cpu_workers, _pod("ray-worker", 16, 64, 20), 16),
            ("gpu", gpu_workers, _pod("ray-worker", 8, 64, 20, gpus=1), 16)):
        groups.append({"groupName": name, "replicas": replicas, "minReplicas": lo, "maxReplicas": hi,
                       "rayStartParams": {"object-store-memory": _gib(shm)}, "template": pod})
    return {
        "rayVersion": "2.60.0",
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 300},
        "headGroupSpec": {
            # num-gpus 0: no GPU task or actor is ever placed on the head, even on a GPU node.
            "rayStartParams": {"num-gpus": "0", "dashboard-host": "0.0.0.0", "object-store-memory": _gib(6)},
            "template": _pod("ray-head", 8, 32, 8, ports=head_ports),
        },
        "workerGroupSpecs": groups,
    }


def _runtime_env_yaml() -> str:
    with open(os.path.join(CLUSTER, "runtime_env.yaml")) as f:
        return f.read()


def _meta(name: str) -> dict:
    return {"name": name, "labels": {"app.kubernetes.io/name": "clipsep-ray", "app.kubernetes.io/component": name}}


#: name -> (entrypoint, activeDeadlineSeconds, backoffLimit, gpu (replicas, min, max), cpu (replicas, min, max))
JOBS = {
    "ingest": (f"python jobs/ingest.py {BUCKET}/vggsound/videos {BUCKET}/vggsound/shards --files-per-task 32",
               6 * 3600, 1, (0, 0, 0), (4, 0, 16)),
    "embed": (f"python jobs/embed.py {BUCKET}/vggsound/shards {BUCKET}/vggsound/shards-embedded "
              f"--clip-model ViT-B-32 --clip-pretrained {BUCKET}/models/vit-b-32-openai.pt --actors 2",
              6 * 3600, 1, (2, 0, 2), (2, 0, 4)),
    # Re-submitting resumes from the latest checkpoint (same run name and storage): backoffLimit retries.
    "train": ("python jobs/train.py --config jobs/experiments/vggsound-clipsep-nit.yaml "
              "train.num_workers=4 train.use_gpu=true run.max_failures=3",
              72 * 3600, 2, (4, 4, 4), (2, 0, 4)),
    # The study URL comes from OPTUNA_STORAGE (the pod's Secret), which the tune command reads
    # itself: the password is never in the entrypoint, and no shell expansion is assumed.
    "tune": (f"python tuning/sweep.py --sweep tuning/masks.yaml --storage {BUCKET}/sweeps",
             48 * 3600, 1, (4, 0, 8), (2, 0, 4)),
    # The archive job skips what is done on a re-run: retries repeat nothing.
    "separate-archive": (f"python jobs/separate_archive.py {BUCKET}/archive {BUCKET}/stems "
                         f"--checkpoint {BUCKET}/runs/vggsound-clipsep-nit/best --query 'dog barking' "
                         "--query siren --actors 4 --gpus-per-actor 0.5",
                         24 * 3600, 2, (2, 0, 2), (2, 0, 8)),
}


def rayjob(name: str) -> dict:
    entrypoint, deadline, retries, gpu, cpu = JOBS[name]
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": _meta(f"clipsep-{name}"),
            "spec": {"entrypoint": entrypoint, "runtimeEnvYAML": _runtime_env_yaml(),
                     "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 3600,
                     "activeDeadlineSeconds": deadline, "backoffLimit": retries,
                     "rayClusterSpec": cluster_spec(gpu_workers=gpu, cpu_workers=cpu)}}


def raycluster() -> dict:
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": _meta("clipsep"), "spec": cluster_spec()}


def rayservice() -> dict:
    with open(os.path.join(CLUSTER, "serve.yaml")) as f:
        serve = f.read()
    spec = cluster_spec(gpu_workers=(1, 1, 4), cpu_workers=(0, 0, 2))
    return {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": _meta("clipsep-serve"),
            "spec": {"serveConfigV2": serve, "rayClusterConfig": spec}}


def manifests() -> dict[str, dict]:
    out = {"raycluster.yaml": raycluster(), "rayservice.yaml": rayservice()}
    out.update({f"rayjob-{name}.yaml": rayjob(name) for name in JOBS})
    return out


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper, s: str):  # multi-line strings (runtimeEnvYAML, serveConfigV2) as readable blocks
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


_Dumper.add_representer(str, _str)


def render(doc: dict) -> str:
    return ("# Generated by cluster/kuberay/render.py: edit that script, then run it.\n"
            + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120))


def main(argv: list[str]) -> int:
    stale = []
    for name, doc in manifests().items():
        path, text = os.path.join(HERE, name), render(doc)
        if "--check" in argv:
            if not os.path.exists(path) or open(path).read() != text:
                stale.append(name)
        else:
            with open(path, "w") as f:
                f.write(text)
    if stale:
        print(f"stale (run python cluster/kuberay/render.py): {', '.join(stale)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
