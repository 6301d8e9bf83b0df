"""The Parquet shard format downstream pipelines read (docs/format.md documents every column)."""
from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"
SCHEMA_VERSION_KEY = b"novarch.schema_version"

SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("class_label", pa.string(), nullable=False),
        pa.field("sampler", pa.string(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),
        pa.field("guidance", pa.float64(), nullable=False),
        pa.field("eta", pa.float64(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("image", pa.binary(), nullable=True),  # PNG bytes when the job embeds images, else null
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
)


def image_key(shard: int, sample_id: int, fmt: str = "png") -> str:
    """Relative to the job folder; one folder per shard spreads keys over many prefixes."""
    return f"images/{shard:05d}/{sample_id:09d}.{fmt}"


def embedded_key(shard: int, sample_id: int) -> str:
    """image_key of an image embedded in its shard's `image` column: the shard file plus the id."""
    return f"{shard_key(shard)}#{sample_id:09d}"


def shard_key(shard: int) -> str:
    return f"shards/part-{shard:05d}.parquet"


def shard_index(key: str) -> int | None:
    """part-00042.parquet -> 42; None for anything that is not a committed shard file."""
    name = key.rsplit("/", 1)[-1]
    if name.startswith("part-") and name.endswith(".parquet"):
        digits = name[len("part-") : -len(".parquet")]
        return int(digits) if digits.isdigit() else None
    return None


def shard_bytes(rows: dict[str, list]) -> bytes:
    """One Parquet file in memory (a shard is small); written by one atomic put, its commit."""
    table = pa.Table.from_pydict(rows, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()
