"""The Parquet shard format downstream pipelines read (docs/format.md documents every column)."""
from __future__ import annotations

import io
import json
import re
import typing

import pyarrow as pa
import pyarrow.parquet as pq

from novarch_batch.workers.spec import SamplingConfig

SCHEMA_VERSION = "5"
READABLE_VERSIONS = ("1", "2", "3", "4", "5")  # what reader.py and verify.py accept; docs/format.md lists what changed
SCHEMA_VERSION_KEY = b"novarch.schema_version"
HF_FEATURES_KEY = b"huggingface"  # where the `datasets` library looks for its Features

# The Hugging Face Image feature's storage: bytes, and a file name that tells the codec.
IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
NO_LABEL = -1  # `label` of an unconditional (--class any) image: the `datasets` convention for "unlabelled"

# 4 MiB of rows per row group: a reader fetches a group with one ranged GET and decodes it whole,
# so a group should be large enough for S3 throughput yet small enough to hold in memory many
# times over. Today's 32x32 PNGs are ~2 KB, so a 1,000-image shard (~2 MB) stays one group; a model
# with 256x256 images (~100 KB PNGs) would get ~40 rows per group instead of one 100 MB group.
ROW_GROUP_BYTES = 4 << 20

_ARROW_TYPES = {str: pa.string(), int: pa.int32(), float: pa.float64(), bool: pa.bool_()}


def sampling_fields() -> list[pa.Field]:
    """A column per sampling option, typed from its field: a new option gets its column by itself.
    (class_label is placed by hand above, beside its label.)"""
    hints = typing.get_type_hints(SamplingConfig)
    return [pa.field(column, _ARROW_TYPES[hints[name]], nullable=False)
            for name, column in SamplingConfig.column_fields() if column != "class_label"]


SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("class_label", pa.string(), nullable=False),
        # ClassLabel: index of class_label in the model's classes, -1 for any. Never null, but declared
        # nullable: `datasets` applies a feature from the metadata only to a field typed exactly as
        # its own (nullable) one, and would read a non-nullable `label` as a plain int64.
        pa.field("label", pa.int64(), nullable=True),
        *sampling_fields(),  # sampler, steps, guidance, eta, ...: one per SamplingConfig option
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("image_key", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("image", IMAGE_TYPE, nullable=True),  # {bytes, path} when --format parquet, else null
    ],
    metadata={SCHEMA_VERSION_KEY: SCHEMA_VERSION.encode()},
)

_HF_DTYPES = {pa.int64(): "int64", pa.int32(): "int32", pa.float64(): "float64", pa.string(): "string",
              pa.timestamp("us", tz="UTC"): "timestamp[us, tz=UTC]"}


def hf_features(classes: tuple[str, ...]) -> dict:
    """The `datasets` Features of SCHEMA, as `datasets` writes them into Parquet metadata."""
    features = {}
    for f in SCHEMA:
        if f.name == "image":
            features[f.name] = {"_type": "Image"}
        elif f.name == "label":
            features[f.name] = {"names": list(classes), "_type": "ClassLabel"}
        else:
            features[f.name] = {"dtype": _HF_DTYPES[f.type], "_type": "Value"}
    return features


def schema_for(classes: tuple[str, ...]) -> pa.Schema:
    """SCHEMA with the Hugging Face metadata for a model with these classes (the ClassLabel names)."""
    hf = json.dumps({"info": {"features": hf_features(classes)}})
    return SCHEMA.with_metadata({**SCHEMA.metadata, HF_FEATURES_KEY: hf.encode()})


def label_of(class_name: str, classes: tuple[str, ...]) -> int:
    return classes.index(class_name) if class_name in classes else NO_LABEL


def image_key(shard: int, sample_id: int, fmt: str = "png") -> str:
    """Relative to the job folder; one folder per shard spreads keys over many prefixes."""
    return f"images/{shard:05d}/{sample_id:09d}.{fmt}"


def image_name(sample_id: int, fmt: str = "png") -> str:
    """An image's name inside a container (the `path` of the Image struct, a tar member)."""
    return f"{sample_id:09d}.{fmt}"


def embedded_key(shard: int, sample_id: int) -> str:
    """image_key of an image embedded in its shard's `image` column: the shard file plus the id."""
    return f"{shard_key(shard)}#{sample_id:09d}"


def shard_key(shard: int) -> str:
    return f"shards/part-{shard:05d}.parquet"


def tar_key(shard: int) -> str:
    """A shard's WebDataset tar. Not under shards/, so that every reader of `shards/` as one Parquet
    dataset (pyarrow, DuckDB, Spark) keeps working: they fail on a non-Parquet file there."""
    return f"webdataset/part-{shard:05d}.tar"


def member_key(shard: int, sample_id: int) -> str:
    """image_key of an image inside its shard's tar: the tar plus the member name."""
    return f"{tar_key(shard)}#{image_name(sample_id)}"


def shard_index(key: str) -> int | None:
    """shards/part-00042.parquet -> 42; None for anything else in shards/ (part-42.parquet, a copy, a
    temporary file): only the key shard_key writes counts."""
    return _index(key, shard_key)


def tar_index(key: str) -> int | None:
    """webdataset/part-00042.tar -> 42; None for any other key."""
    return _index(key, tar_key)


def _index(key: str, key_of) -> int | None:
    number = re.search(r"part-(\d+)\.", key)
    return int(number[1]) if number and key_of(int(number[1])) == key else None


def shard_bytes(rows: dict[str, list], classes: tuple[str, ...]) -> bytes:
    """One Parquet file in memory (a shard is small); written by one atomic put, its commit."""
    table = pa.Table.from_pydict(rows, schema=schema_for(classes))
    rows_per_group = max(1, ROW_GROUP_BYTES * table.num_rows // max(table.nbytes, 1))
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=rows_per_group, compression="zstd")
    return buf.getvalue()
