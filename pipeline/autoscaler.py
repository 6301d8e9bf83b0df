"""What a cluster's autoscaler could add, seen from the driver (Ray 2.60 has no public API for it).

Two sources, in order: the autoscaler config that Ray keeps in its control store when someone
published it there (the ``ClusterConfig`` that Ray Data's autoscaler also reads), and, for a
driver on the head machine (a Jobs API job, `ray up`'s head), the config file of the local
autoscaler monitor that serves this cluster. ``None`` means no autoscaler is known: a laptop,
a fixed cluster, or one whose autoscaler runs elsewhere (KubeRay's sidecar) — then `--gpus N`
says how many GPUs to ask for.
"""
from __future__ import annotations

import os
from pathlib import Path

import ray

CONFIG_NAMESPACE, CONFIG_KEY = b"__autoscaler", b"__autoscaler_cluster_config"  # ray._raylet.GCS_AUTOSCALER_*


def most_of(resource: str, node_types: dict, head_type: str | None, cluster_max_workers: int | None) -> int:
    """The most of `resource` a launcher config can bring up: each worker type's max_workers x its
    resources, richest nodes first, capped by the cluster-wide max_workers (a count of worker nodes)."""
    per_node = []
    for name, node_type in node_types.items():
        if name != head_type:
            per_node += [float(node_type.get("resources", {}).get(resource, 0))] * int(node_type.get("max_workers", 0))
    per_node.sort(reverse=True)
    if cluster_max_workers is not None:
        per_node = per_node[: int(cluster_max_workers)]
    head = float(node_types.get(head_type, {}).get("resources", {}).get(resource, 0)) if head_type else 0.0
    return int(head + sum(per_node))


def _published() -> int | None:
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(CONFIG_KEY, namespace=CONFIG_NAMESPACE)
    if not raw:
        return None
    config = autoscaler_pb2.ClusterConfig.FromString(raw)
    total = sum(group.max_count * group.resources.get("GPU", 0) for group in config.node_group_configs)
    return int(min(total, config.max_resources.get("GPU", total)))


def _local_monitor() -> int | None:
    """The --autoscaling-config of this machine's monitor.py whose --gcs-address is our cluster's."""
    import yaml

    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(arg.endswith("/monitor.py") for arg in argv):
            continue
        args = dict(arg[2:].split("=", 1) for arg in argv if arg.startswith("--") and "=" in arg)
        if args.get("gcs-address", "").rsplit(":", 1)[-1] == port and args.get("autoscaling-config"):
            config = yaml.safe_load(Path(args["autoscaling-config"]).expanduser().read_text())
            return most_of("GPU", config.get("available_node_types", {}), config.get("head_node_type"), config.get("max_workers"))
    return None


def max_gpus() -> int | None:
    """GPUs the cluster could hold at full scale-up, or None when no autoscaler is known. Never raises:
    these are private corners of Ray, and planning from the GPUs present is the safe fallback."""
    try:
        found = _published()
        return found if found is not None else _local_monitor()
    except Exception:
        return None
