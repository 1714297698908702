"""A multi-node Ray cluster on this machine: a head and worker nodes, each its own ``ray start``.

    python cluster/local.py start  --dir /tmp/crl --workers 2     # head + 2 worker nodes
    python cluster/local.py status --dir /tmp/crl                 # address, dashboard, nodes (JSON)
    python cluster/local.py add    --dir /tmp/crl                 # one more worker node
    python cluster/local.py kill   --dir /tmp/crl w1              # SIGKILL one node (fault injection)
    python cluster/local.py stop   --dir /tmp/crl                 # stop every node

Every node gets its own temp dir (``DIR/<node>``), its own ports (free ports picked at start,
listed in ``DIR/cluster.json``) and its own logical resources: the head has ``--head-cpus`` CPUs
and no GPU (drivers, Ray Data; it takes no GPU work, like the KubeRay head), each worker
``--worker-cpus`` CPUs and ``--worker-gpus`` GPUs. Nodes run ``ray start --block`` in their own
process session, so ``kill`` and ``stop`` touch only this cluster's processes (found by the node's
temp dir in their command line), never another Ray on the machine. Nodes inherit this process's
environment: that is how object-storage credentials and ``AWS_ENDPOINT_URL`` reach the jobs, as
a Kubernetes Secret does on KubeRay. Keep ``--dir`` short: Ray's socket paths live under it and
Unix sockets allow about 107 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

STATE = "cluster.json"
NODE_PORTS = ("node-manager-port", "object-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
              "dashboard-agent-listen-port", "metrics-export-port")
HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port")
WORKER_PORT_RANGE = 60  # ports for one node's worker processes (one each; 2-4 workers per node here)


def free_ports(n: int, taken: set[int]) -> list[int]:
    """``n`` ports free now and not in ``taken`` (all sockets held open until all are chosen)."""
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        socks.append(s)
        if p not in taken:
            ports.append(p)
    for s in socks:
        s.close()
    return ports


def free_range(size: int, taken: set[int]) -> int:
    """The first port of ``size`` consecutive ports that are free and not in ``taken``."""
    start = 20000
    while start + size < 30000:
        block = range(start, start + size)
        if not taken.intersection(block) and all(_bindable(p) for p in block):
            return start
        start += size
    raise RuntimeError("no free block of worker ports in 20000-30000")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _taken(state: dict) -> set[int]:
    out: set[int] = set()
    for node in state["nodes"].values():
        out |= set(node["ports"].values())
        lo = node["ports"]["min-worker-port"]
        out |= set(range(lo, lo + WORKER_PORT_RANGE))
    return out


def _load(d: str) -> dict:
    path = os.path.join(d, STATE)
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no cluster was started in {d}")
    with open(path) as f:
        return json.load(f)


def _save(d: str, state: dict) -> None:
    tmp = os.path.join(d, STATE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1)
    os.replace(tmp, os.path.join(d, STATE))


def _start_node(d: str, state: dict, name: str, head: bool, cpus: int, gpus: int, object_store_mb: int) -> dict:
    taken = _taken(state)
    names = NODE_PORTS + (HEAD_PORTS if head else ())
    ports = dict(zip(names, free_ports(len(names), taken)))
    ports["min-worker-port"] = free_range(WORKER_PORT_RANGE, taken | set(ports.values()))
    temp_dir = os.path.join(d, name)
    os.makedirs(temp_dir, exist_ok=True)
    cmd = ["ray", "start", "--block", "--node-ip-address", "127.0.0.1", "--node-name", name, "--temp-dir", temp_dir,
           "--num-cpus", str(cpus), "--num-gpus", str(gpus), "--object-store-memory", str(object_store_mb << 20),
           "--disable-usage-stats",
           "--max-worker-port", str(ports["min-worker-port"] + WORKER_PORT_RANGE - 1),
           *[a for k, v in ports.items() for a in (f"--{k}", str(v))]]
    if head:
        cmd += ["--head", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
    else:
        cmd += ["--address", state["address"]]
    gcs = f"127.0.0.1:{ports['port']}" if head else state["address"]
    # RAY_ADDRESS names this cluster to every process of the node: Ray's own helpers that look the
    # cluster up (Train's placement-group cleaner, the State API) otherwise fail with "multiple
    # active Ray instances" when another Ray runs on the machine (seen here).
    env = {**os.environ, "RAY_ADDRESS": gcs}
    log = open(os.path.join(d, f"{name}.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    node = {"pid": proc.pid, "temp_dir": temp_dir, "head": head, "cpus": cpus, "gpus": gpus, "ports": ports}
    state["nodes"][name] = node
    if head:
        state["address"] = gcs
        state["dashboard"] = f"http://127.0.0.1:{ports['dashboard-port']}"
    _save(d, state)
    return node


class NodeExited(RuntimeError):
    pass


def _start_workers(d: str, state: dict, names: list[str], timeout_s: float, attempts: int = 2) -> None:
    """Start worker nodes; one that exits while starting is started again once with fresh ports
    (a port picked free can be taken by another process before the node binds it)."""
    for name in names:
        w = state["worker"]
        _start_node(d, state, name, False, w["cpus"], w["gpus"], w["object_store_mb"])
    for attempt in range(attempts):
        try:
            return _wait_alive(state, names, timeout_s)
        except NodeExited as e:
            if attempt == attempts - 1:
                raise SystemExit(str(e)) from None
            print(f"{e}\nretrying", file=sys.stderr)
            for name in names:
                if _exit_code(state["nodes"][name]["pid"]) is not None:
                    w = state["worker"]
                    _start_node(d, state, name, False, w["cpus"], w["gpus"], w["object_store_mb"])


def alive_nodes(dashboard: str) -> dict[str, str]:
    """node name -> node id of the ALIVE nodes, from the State API of the dashboard."""
    with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=1000&detail=1", timeout=10) as r:
        body = json.load(r)
    return {n["node_name"]: n["node_id"] for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"}


def _wait_alive(state: dict, names: list[str], timeout_s: float) -> None:
    deadline, last = time.time() + timeout_s, ""
    while time.time() < deadline:
        for name in names:
            if (code := _exit_code(state["nodes"][name]["pid"])) is not None:
                with open(os.path.join(state["dir"], f"{name}.log"), errors="replace") as f:
                    tail = f.read()[-3000:]
                raise NodeExited(f"node {name} exited with {code} while starting; its log ends:\n{tail}")
        try:
            if set(names) <= set(alive_nodes(state["dashboard"])):
                return
        except Exception as e:  # the dashboard answers some seconds after the head starts
            last = repr(e)
        time.sleep(1)
    raise SystemExit(f"nodes {names} not alive after {timeout_s:.0f} s {last}")


def _exit_code(pid: int) -> int | None:
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (another invocation started it): alive if it exists
        return None if os.path.exists(f"/proc/{pid}") else 0
    return os.waitstatus_to_exitcode(status) if done else None


def node_pids(temp_dir: str) -> list[int]:
    """The processes of one node: its ``ray start``, raylet, GCS, agents and workers all name the
    node's temp dir (or its session dir beneath it) on their command line."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(temp_dir.encode() in a for a in args):
            pids.append(int(p))
    return pids


def _signal_node(node: dict, sig: int) -> list[int]:
    pids = set(node_pids(node["temp_dir"]))
    try:
        pids.add(node["pid"])
        os.killpg(node["pid"], sig)  # the node's session: ray start and what it spawned
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return sorted(pids)


def _wait_gone(node: dict, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        _exit_code(node["pid"])  # reap it if it is our child
        if not node_pids(node["temp_dir"]):
            return True
        time.sleep(0.2)
    return False


def start(a: argparse.Namespace) -> dict:
    d = os.path.abspath(a.dir)
    os.makedirs(d, exist_ok=True)
    if os.path.exists(os.path.join(d, STATE)) and any(node_pids(n["temp_dir"]) for n in _load(d)["nodes"].values()):
        raise SystemExit(f"a cluster is already running in {d}: stop it first")
    state = {"dir": d, "address": None, "dashboard": None, "nodes": {},
             "worker": {"cpus": a.worker_cpus, "gpus": a.worker_gpus, "object_store_mb": a.object_store_mb}}
    _start_node(d, state, "head", True, a.head_cpus, 0, a.object_store_mb)
    try:
        _wait_alive(state, ["head"], a.timeout)
    except NodeExited as e:
        raise SystemExit(str(e)) from None
    _start_workers(d, state, [f"w{i + 1}" for i in range(a.workers)], a.timeout)
    return status_of(state)


def add(a: argparse.Namespace) -> dict:
    d = os.path.abspath(a.dir)
    state = _load(d)
    name = f"w{1 + max([int(n[1:]) for n in state['nodes'] if n != 'head'] or [0])}"
    _start_workers(d, state, [name], a.timeout)
    return status_of(state)


def kill(a: argparse.Namespace) -> dict:
    state = _load(os.path.abspath(a.dir))
    if a.node not in state["nodes"]:
        raise SystemExit(f"no node {a.node!r}; nodes: {', '.join(state['nodes'])}")
    node = state["nodes"][a.node]
    pids = _signal_node(node, signal.SIGKILL)
    if not _wait_gone(node, 10):
        raise SystemExit(f"node {a.node}: processes {node_pids(node['temp_dir'])} survived SIGKILL")
    return {"killed": a.node, "pids": pids}


def stop(a: argparse.Namespace) -> dict:
    """SIGTERM (ray start --block then stops its node), all workers at once and then the head;
    SIGKILL what is left after 15 s."""
    state = _load(os.path.abspath(a.dir))
    running = {n: node for n, node in state["nodes"].items() if node_pids(node["temp_dir"])}
    for group in ([n for n in running if n != "head"], [n for n in running if n == "head"]):
        for name in group:
            _signal_node(running[name], signal.SIGTERM)
        deadline = time.time() + 15
        for name in group:
            if not _wait_gone(running[name], max(0.5, deadline - time.time())):
                _signal_node(running[name], signal.SIGKILL)
                _wait_gone(running[name], 5)
    return {"stopped": sorted(running)}


def status_of(state: dict) -> dict:
    try:
        alive = alive_nodes(state["dashboard"])
    except Exception:
        alive = {}
    return {"address": state["address"], "dashboard": state["dashboard"],
            "nodes": {name: {"alive": name in alive, "node_id": alive.get(name), "cpus": n["cpus"], "gpus": n["gpus"],
                             "temp_dir": n["temp_dir"], "ports": n["ports"]} for name, n in state["nodes"].items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cluster/local.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    for name in ("start", "status", "add", "kill", "stop"):
        s = sub.add_parser(name)
        s.add_argument("--dir", default="/tmp/clipsep-ray-local", help="state, logs and node temp dirs")
        s.add_argument("--timeout", type=float, default=120, help="seconds to wait for nodes to come up")
        if name == "start":
            s.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
            s.add_argument("--head-cpus", type=int, default=1, help="logical CPUs of the head (default 1)")
            s.add_argument("--worker-cpus", type=int, default=2, help="logical CPUs per worker node (default 2)")
            s.add_argument("--worker-gpus", type=int, default=0, help="GPUs per worker node (default 0)")
            s.add_argument("--object-store-mb", type=int, default=256, help="object store per node (default 256)")
        if name == "kill":
            s.add_argument("node", help="node name (head, w1, w2, ...)")
    a = p.parse_args(argv)
    out = {"start": start, "status": lambda a: status_of(_load(os.path.abspath(a.dir))), "add": add, "kill": kill,
           "stop": stop}[a.action](a)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
