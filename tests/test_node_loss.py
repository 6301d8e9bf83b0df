"""A worker node is lost mid-job in a multi-node Ray cluster (head + two workers on this machine)."""
from __future__ import annotations

import threading

import pytest
import ray
from ray.cluster_utils import Cluster

from novarch_batch.pipeline import driver
from novarch_batch.pipeline.spec import build_spec
from novarch_batch.pipeline.verify import verify
from tests.procs import wait_for


@pytest.fixture
def three_node_cluster(s3_server):
    ray.shutdown()  # leave the session's local Ray; driver.run starts a fresh one for later tests
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # like ray_cluster.yaml: no actors on the head
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


def test_job_completes_after_a_node_is_removed(three_node_cluster, tmp_path):
    cluster, workers = three_node_cluster
    # Four one-CPU actors on two two-CPU nodes: each node holds two of them.
    spec = build_spec(count=64, out=str(tmp_path), steps=6, shard_size=4, batch_size=4, actors=4, seed=17)
    outcome: dict = {}

    def target():
        try:
            outcome["report"] = driver.run(spec)
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    shards = tmp_path / spec.job_id / "shards"
    wait_for(lambda: shards.exists() and len(list(shards.iterdir())) >= 2, 180, "two committed shards")
    cluster.remove_node(workers[0])
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    report = outcome["report"]
    assert report.complete and report.actors_replaced >= 2
    print(f"node loss: shards recovered in {report.recovery_seconds} s")
    result = verify(str(tmp_path / spec.job_id), full=True)
    assert result.ok and result.rows == 64, result.problems
