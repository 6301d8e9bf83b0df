"""`status`: how far a job is, whether it is running, finished or was interrupted."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from novarch_batch.pipeline.manifest import REPAIR_LOST_SHARDS
from novarch_batch.pipeline.shards import shard
from novarch_batch.pipeline.reader import JobView


@dataclass
class StatusReport:
    url: str
    job_id: str
    shards_committed: int  # their Parquet files are there
    shards_planned: int
    images_committed: int  # in committed shards whose images are all there
    images_planned: int
    complete: bool
    finished: bool  # _SUCCESS was written: a finished job missing shards was damaged since
    shards_missing_images: int = 0  # committed, but a PNG or the tar is gone: a resume samples them again

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        if self.complete:
            state = "complete"
        elif self.finished:
            state = f"damaged: it finished, but shards or their images are gone since (`novarch-batch verify` lists them); {REPAIR_LOST_SHARDS}"
        else:
            state = "incomplete (running, or interrupted: re-run the same submit to resume)"
        pct = 100 * self.images_committed / self.images_planned
        lost = f" ({self.shards_missing_images} of them missing images)" if self.shards_missing_images else ""
        return (f"{self.job_id}: {state}\n  shards {self.shards_committed}/{self.shards_planned}{lost}, "
                f"images {self.images_committed}/{self.images_planned} ({pct:.1f}%)\n  at {self.url}")


def status(url: str) -> StatusReport:
    view = JobView.open(url)
    committed = {k for k in view.committed() if k < view.num_shards}
    # A shard whose images are gone (a PNG or its tar) is not whole: a resume samples it again.
    lost = view.shards_missing_images(sorted(committed))
    whole = committed - set(lost)
    images = sum(shard(k, view.count, view.shard_size).size for k in whole)
    finished = view.success() is not None
    complete = finished and set(range(view.num_shards)) <= whole
    return StatusReport(view.url, view.job["job_id"], len(committed), view.num_shards, images, view.count, complete, finished,
                        shards_missing_images=len(lost))
