"""Job counters exported through Ray's metrics (the Ray dashboard and Prometheus show them).

Ray serves them as ``ray_novarch_<name>`` with the job id as a tag. They are counters, so a
dashboard's rate() gives images/s and a resumed job simply adds to them.
"""
from __future__ import annotations

COUNTERS = {
    "images_total": "images sampled and committed",
    "shards_committed_total": "shards whose Parquet file was committed",
    "shard_retries_total": "shard attempts that failed with the shard's own error and were retried",
    "preemptions_total": "sampler actors lost under their shards (node gone, spot preemption); not shard attempts",
}


class JobMetrics:
    def __init__(self, job_id: str):
        from ray.util.metrics import Counter  # only once Ray is connected

        self.tags = {"job_id": job_id}
        self.counters = {name: Counter(f"novarch_{name}", description=text, tag_keys=("job_id",)) for name, text in COUNTERS.items()}

    def add(self, name: str, value: int = 1) -> None:
        if value:
            self.counters[name].inc(value, tags=self.tags)
