"""job.json (written first) and _SUCCESS (written last): what a job is and proof that it finished."""
from __future__ import annotations

import io
import json
import platform
from collections.abc import Collection
from datetime import datetime, timezone
from importlib import metadata

import pyarrow as pa
import pyarrow.parquet as pq

from novarch_batch.pipeline.shards import Shard, num_shards, shard
from novarch_batch.pipeline.spec import JobSpec, SpecError
from novarch_batch.storage import Storage, StorageError, sha256_file
from novarch_batch.workers import shard_format
from novarch_batch.workers.commit import read_checksum
from novarch_batch.workers.seed_hash import sample_seed

JOB_FILE = "job.json"
SUCCESS_FILE = "_SUCCESS"


def versions() -> dict:
    found = {"python": platform.python_version()}
    for dist in ("novarch-batch", "torch", "diffusers", "ray", "pyarrow"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def job_document(spec: JobSpec, created_at: str) -> dict:
    return {
        "schema_version": shard_format.SCHEMA_VERSION,
        "job_id": spec.job_id,
        "spec_hash": spec.spec_hash(),
        "created_at": created_at,
        "spec": spec.to_dict(),
        "model": {"path": spec.model, "sha256": spec.model_sha256},
        "shard_plan": {"count": spec.count, "shard_size": spec.output.shard_size, "num_shards": spec.num_shards},
        "versions": versions(),
    }


# A finished job that has lost shards or images since: what brings them back (the same command, after
# this: a resume samples again every shard whose Parquet file or image objects are gone).
REPAIR_LOST_SHARDS = "delete _SUCCESS and re-run the same submit to sample them again, with identical bytes"
DAMAGED_FIX = {JOB_FILE: "restore it from a copy, or run the job again under another --out",
               SUCCESS_FILE: "delete it and re-run the same submit to write it again"}


def repair_by_hand(document: dict) -> str | None:
    """The repair of a damaged job begun with an older Parquet schema, or None for this one's. Such a job
    resumes only with the novarch-batch that began it, which does not look for lost images (nor for
    damaged shards): their commits must go by hand."""
    version = str(document.get("schema_version", "1"))
    if version == shard_format.SCHEMA_VERSION:
        return None
    return (f"delete _SUCCESS and the Parquet file (shards/part-NNNNN.parquet) of each damaged shard (`novarch-batch verify` "
            f"lists them), then re-run the same submit with the novarch-batch that began the job (Parquet schema {version})")


def read_json(job: Storage, key: str) -> dict | None:
    """A manifest, or None when absent; a damaged one is a StorageError that says what to do."""
    if not job.exists(key):
        return None
    try:
        document = json.loads(job.get_bytes(key))
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise StorageError(f"{job.url}/{key} is damaged (not a JSON object); {DAMAGED_FIX.get(key, 'restore it')}")
    return document


def read_job(job: Storage) -> dict | None:
    """job.json, or None when absent. Every count and check downstream trusts it, so one whose spec no
    longer hashes to its spec_hash, or whose shard plan is not its spec's (edited by hand), is a
    StorageError like a damaged one. An older schema's spec may not rebuild here: its own version checks it."""
    document = read_json(job, JOB_FILE)
    if document is None or str(document.get("schema_version")) != shard_format.SCHEMA_VERSION:
        return document
    try:
        spec, plan = JobSpec.from_dict(document["spec"]), document["shard_plan"]
        intact = spec.spec_hash() == document["spec_hash"] and \
            (plan["count"], plan["shard_size"], plan["num_shards"]) == (spec.count, spec.output.shard_size, spec.num_shards)
    except Exception:  # any field that no longer builds a spec (SpecError is a ValueError; null, 0 steps, ...)
        intact = False
    if not intact:
        raise StorageError(f"{job.url}/{JOB_FILE} was edited or damaged (its spec, spec_hash and shard plan disagree); "
                           f"{DAMAGED_FIX[JOB_FILE]}")
    return document


def prepare_job(job: Storage, spec: JobSpec, committed: Collection[int] = ()) -> str:
    """Write job.json for a new job, or check that an existing one is this very spec.

    Returns the job's creation time, which every Parquet row carries, so that a resumed job
    rewrites a shard with the same bytes as the first run would have. A job.json lost while shards
    stayed (`committed`) is written again with the creation time read back from one of them.
    """
    existing = read_job(job)
    if existing is not None:
        check_same_spec(job, spec, existing)
        return existing["created_at"]
    committed = [k for k in committed if k < spec.num_shards]  # a shard past the plan is a stray, never the job's
    if committed:
        created_at = creation_time_from_shards(job, spec, committed)
    else:
        created_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    job.put_bytes(JOB_FILE, json.dumps(job_document(spec, created_at), indent=2).encode())
    return created_at


def creation_time_from_shards(job: Storage, spec: JobSpec, committed: Collection[int]) -> str:
    """The job's creation time as its committed shards' rows carry it, for a job.json written again.

    The first readable shard must be this spec's (schema version, job id, sampling columns, model, its
    first id and that id's seed): shards of another spec under a reused --job-id, or of an older schema,
    are refused, never adopted."""
    unreadable = []
    for k in sorted(committed):
        key = shard_format.shard_key(k)
        try:  # ParquetFile, not pq.read_table: see reader.JobView.shard_table (a crash at exit)
            parquet = pq.ParquetFile(pa.BufferReader(job.get_bytes(key)))
            row = parquet.read_row_group(0).slice(0, 1).to_pylist()[0]
            version = (parquet.schema_arrow.metadata or {}).get(shard_format.SCHEMA_VERSION_KEY, b"").decode()
        except (pa.ArrowException, OSError, IndexError):
            unreadable.append(key)
            continue
        expected = {**spec.sampling.columns(), "job_id": spec.job_id, "model_sha256": spec.model_sha256,
                    "id": shard(k, spec.count, spec.output.shard_size).start}
        ours = version == shard_format.SCHEMA_VERSION and row["seed"] == sample_seed(spec.sampling.seed, row["id"]) and \
            all(json.dumps(row.get(column)) == json.dumps(value) for column, value in expected.items())
        if not ours:
            raise SpecError(f"{job.url}/{JOB_FILE} is missing and {key} was sampled with another spec or novarch-batch "
                            f"version: restore {JOB_FILE} from a copy, or choose another --job-id or --out")
        return row["created_at"].isoformat(timespec="microseconds")
    raise StorageError(f"{job.url}/{JOB_FILE} is missing and the committed shards that would give back the job's creation "
                       f"time are unreadable ({', '.join(unreadable[:3])}): restore {JOB_FILE} from a copy, or delete them "
                       "and re-run")


def check_same_spec(job: Storage, spec: JobSpec, existing: dict) -> None:
    written = str(existing.get("schema_version", "1"))
    if written != shard_format.SCHEMA_VERSION and read_json(job, SUCCESS_FILE) is None:
        raise SpecError(
            f"{job.url} was started with Parquet schema {written}; this version writes schema {shard_format.SCHEMA_VERSION}, "
            f"and one job must not mix them: finish it with the novarch-batch that started it, or start anew with another --job-id"
        )
    started_with = (existing.get("model") or {}).get("sha256")
    if started_with and started_with != spec.model_sha256:
        name = shipped_model_named(started_with) or existing["model"].get("path", "the model that started it")
        raise SpecError(
            f"{job.url} was started with another model (weights sha256 {started_with[:12]}), and one job must not "
            f"mix two models: resume it with --model {name}, or start anew with another --job-id"
        )
    if existing.get("spec_hash") != spec.spec_hash():
        raise SpecError(
            f"{job.url} holds job '{spec.job_id}' with another spec (hash {str(existing.get('spec_hash'))[:12]}); "
            f"choose another --job-id or --out, or repeat the original flags to resume it"
        )


def shipped_model_named(sha256: str) -> str | None:
    """The shipped model whose weights have this sha256 (v1 stays shipped for exactly this), if any."""
    from novarch_batch.workers.model import WEIGHTS, default_model_dir
    from novarch_batch.workers.spec import SHIPPED_MODELS

    return next((name for name in SHIPPED_MODELS if sha256_file(default_model_dir(name) / WEIGHTS) == sha256), None)


def committed_shards(job: Storage) -> set[int]:
    """A shard exists once its Parquet file does (the commit is its last write)."""
    return {k for k in (shard_format.shard_index(key) for key in job.list("shards/")) if k is not None}


def job_format(document: dict) -> str:
    """A job's --format from its job.json; jobs begun before --format existed said `embed_images`."""
    output = document.get("spec", {}).get("output", {})
    return output.get("format") or ("parquet" if output.get("embed_images") else "files")


def shards_missing_images(job: Storage, fmt: str, count: int, shard_size: int, indices) -> dict[int, str]:
    """Committed shards (of `indices`; any outside the plan are skipped) whose image objects (a PNG per
    image, or the shard's tar) are not all in storage, each with the first one missing. One LIST per folder they live in (images/<shard>/
    each, or webdataset/ for every tar), 16 at a time, and no GET: about count / shard_size requests for
    --format files, one per 1,000 tars for webdataset, none for embedded images."""
    from concurrent.futures import ThreadPoolExecutor

    from novarch_batch.workers.writers import WRITERS

    stored = WRITERS[fmt].stored
    by_folder: dict[str, list[Shard]] = {}
    for k in indices:
        if not 0 <= k < num_shards(count, shard_size):
            continue
        s = shard(k, count, shard_size)
        first = stored(s.index, range(s.start, s.start + 1))  # a shard's objects lie in one folder (ShardWriter.stored)
        if first:
            by_folder.setdefault(first[0].rsplit("/", 1)[0] + "/", []).append(s)

    def missing_in(folder: str) -> dict[int, str]:
        present = set(job.list(folder))
        gone = {s.index: next((key for key in stored(s.index, range(s.start, s.stop)) if key not in present), None)
                for s in by_folder[folder]}
        return {k: key for k, key in gone.items() if key is not None}

    with ThreadPoolExecutor(max_workers=16) as pool:
        return dict(sorted(item for missing in pool.map(missing_in, by_folder) for item in missing.items()))


def shard_checksums(job: Storage, shards: list[int], threads: int = 16, read=read_checksum) -> dict[int, str]:
    """Committed shards' sha256 from their sidecars (a few bytes each, fetched in parallel): a resume
    never downloads a shard's body to learn it. `read=sidecar_checksum`: None for a shard without one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(zip(shards, pool.map(lambda k: read(job, k), shards)))


def write_success(job: Storage, spec: JobSpec, checksums: dict[int, str], stats: dict) -> dict:
    """_SUCCESS last: only written when every planned shard has its Parquet file in storage."""
    present = committed_shards(job)
    missing = [k for k in range(spec.num_shards) if k not in present]
    if missing:
        raise StorageError(f"{job.url}: {len(missing)} shards are not in storage (first: {missing[0]}); re-run the same command to finish them")
    document = {
        "job_id": spec.job_id,
        "spec_hash": spec.spec_hash(),
        "count": spec.count,
        "num_shards": spec.num_shards,
        "completed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shards": {shard_format.shard_key(k): checksums[k] for k in sorted(checksums)},
        **stats,
    }
    job.put_bytes(SUCCESS_FILE, json.dumps(document, indent=2).encode())
    return document
