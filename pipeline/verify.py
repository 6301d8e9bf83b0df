"""`verify`: prove a job folder is complete and intact; list every problem found."""
from __future__ import annotations

import hashlib
import json
import random
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass, field

from novarch_batch.pipeline import manifest
from novarch_batch.pipeline.reader import DamagedShard, JobView
from novarch_batch.storage import StorageError
from novarch_batch.workers import shard_format
from novarch_batch.workers.commit import sidecar_checksum, sidecar_key

DEFAULT_SAMPLE = 64  # images whose bytes are re-hashed without --full: catches systematic damage cheaply
REPAIR = ("delete _SUCCESS (if there) and re-run the same submit: it samples again every shard whose Parquet file or "
          "images are gone, with identical bytes; a shard whose Parquet file holds the wrong rows needs that file deleted first")


@dataclass
class VerifyReport:
    url: str
    ok: bool = True
    rows: int = 0
    expected_rows: int = 0
    shards: int = 0
    expected_shards: int = 0
    images_checked: int = 0
    problems: list[str] = field(default_factory=list)
    # Shards committed but damaged (unreadable, another checksum, an image that is not its row's): a
    # resume trusts a commit and skips them, so the repair names their Parquet files to delete.
    damaged_shards: list[int] = field(default_factory=list)
    _damaged: set[int] = field(default_factory=set, repr=False)
    # Files among a job's own that no shard wrote (a copy, a part beyond the plan): readers of the folder
    # read them too, and a re-run leaves them, so the repair names them to delete.
    stray_files: list[str] = field(default_factory=list)
    problem_count: int = 0  # all of them; `problems` keeps the first 50
    repair: str = ""  # what brings a damaged job back, when there are problems

    def problem(self, text: str) -> None:
        self.ok = False
        self.problem_count += 1
        if len(self.problems) < 50:  # enough to act on; the count below says how bad it is
            self.problems.append(text)

    def damaged(self, shard: int, text: str) -> None:
        self.problem(text)
        self._damaged.add(shard)

    def stray(self, key: str, text: str) -> None:
        self.problem(f"{key}: {text}; delete it")
        self.stray_files.append(key)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def verify(url: str, full: bool = False, sample: int = DEFAULT_SAMPLE, seed: int = 0) -> VerifyReport:
    view = JobView.open(url)
    report = VerifyReport(view.url, expected_rows=view.count, expected_shards=view.num_shards)
    success = view.success()
    if success is None:
        report.problem("_SUCCESS is missing: the job did not finish")
    elif success.get("spec_hash") != view.job.get("spec_hash"):
        report.problem("_SUCCESS belongs to another spec than job.json")
        success = None  # its checksums say nothing of these shards
    listed = {key: shard_format.shard_index(key) for key in view.storage.list("shards/")}  # one listing serves both uses
    committed = {k for k in listed.values() if k is not None and k < view.num_shards}  # one past the plan is a stray
    report.shards = len(committed)
    missing = sorted(set(range(view.num_shards)) - committed)
    if missing:
        report.problem(f"{len(missing)} shard(s) missing, first: {shard_format.shard_key(missing[0])}")
    seen = bytearray(view.count)  # one byte per id: 100 MB at the 10^8 ceiling, no Python objects
    duplicates = outside = 0
    to_check = []
    rng = random.Random(seed)
    expected_version = str(view.job.get("schema_version", shard_format.SCHEMA_VERSION))  # the version the job started with
    if expected_version not in shard_format.READABLE_VERSIONS:
        report.problem(f"job.json: schema version {expected_version!r}, this novarch-batch reads "
                       f"{', '.join(shard_format.READABLE_VERSIONS)}; upgrade novarch-batch")
    found = [(key, index, "not a shard of this job, yet every reader of shards/ reads it as one") for key, index in listed.items()]
    if manifest.job_format(view.job) == "webdataset":
        # Listed again (the lost-image check lists it too): one request per 1,000 tars, for one message that shows it.
        found += [(key, shard_format.tar_index(key), "not one of this job's tars, yet a reader of webdataset/ "
                   "(Ray Data's read_webdataset) reads its samples too") for key in view.storage.list("webdataset/")]
    for key, index, why in found:
        if (index is None or index >= view.num_shards) and read_by_folder_readers(key):
            report.stray(key, why)
    for k, key in view.shards_missing_images(sorted(committed)).items():
        report.problem(f"{shard_format.shard_key(k)}: its images are not all in storage (first missing: {key})")
    shard_ids: dict[int, list[int]] = {}
    recorded, recorded_in = expected_checksums(view, success, sorted(committed))
    for k in sorted(committed):
        data = view.shard_bytes(k)  # one download: parsed and hashed
        if recorded.get(k) not in (None, hashlib.sha256(data).hexdigest()):
            report.damaged(k, f"{shard_format.shard_key(k)}: checksum differs from {recorded_in(k)}")
        try:
            table = view.shard_table(k, data)
        except DamagedShard as e:
            report.damaged(k, str(e).removeprefix(f"{view.url}/"))
            continue
        shard_ids[k] = table.column("id").to_pylist()
        version = (table.schema.metadata or {}).get(shard_format.SCHEMA_VERSION_KEY)
        if version != expected_version.encode():
            report.damaged(k, f"{shard_format.shard_key(k)}: schema version {version!r}, expected {expected_version} (job.json)")
        for row in table.select(["id", "image_key", "sha256", "image"]).to_pylist():
            report.rows += 1
            i = row["id"]
            if not 0 <= i < view.count:
                outside += 1
            elif seen[i]:
                duplicates += 1
            else:
                seen[i] = 1
            # Reservoir sample of rows to re-hash (all of them with --full), with the shard they were read from.
            if full or len(to_check) < sample:
                to_check.append((k, row))
            elif (j := rng.randrange(report.rows)) < sample:
                to_check[j] = (k, row)
    if report.rows != view.count:
        report.problem(f"{report.rows} rows, expected {view.count}")
    if duplicates:
        report.problem(f"{duplicates} duplicate id(s)")
    if outside:
        report.problem(f"{outside} id(s) outside 0..{view.count - 1}")
    absent = view.count - sum(seen)
    if absent:
        report.problem(f"{absent} id(s) missing, first: {seen.index(0)}")
    tars_checked = set()
    for k, row in sorted(to_check, key=lambda pair: pair[1]["image_key"]):  # a tar's rows together: one download each
        container = row["image_key"].partition("#")[0]
        if container.endswith(".tar") and container not in tars_checked:
            tars_checked.add(container)
            check_tar(view, container, shard_ids, report)
        report.images_checked += 1
        try:
            data = view.image_bytes(row)
        except Exception:
            report.problem(f"{row['image_key']}: image missing")  # a lost image: the resume finds it by listing
            continue
        if hashlib.sha256(data).hexdigest() != row["sha256"]:
            report.damaged(k, f"{row['image_key']}: sha256 does not match its Parquet row")
    report.damaged_shards = sorted(report._damaged)
    if not report.ok:
        report.repair = with_strays(report, manifest.repair_by_hand(view.job) or repair(report.damaged_shards))
    return report


def read_by_folder_readers(key: str) -> bool:
    """Whether a reader of the key's folder opens it as data: pyarrow's datasets and Ray Data skip names
    that start with '.' or '_', and an S3 folder marker (a key ending in '/') is no file."""
    name = key.rsplit("/", 1)[-1]
    return bool(name) and not name.startswith((".", "_"))


def with_strays(report: VerifyReport, fix: str) -> str:
    """The repair with the stray files first: a re-run does not remove them, and alone they are all of it."""
    if not report.stray_files:
        return fix
    if report.problem_count == len(report.stray_files):
        return f"delete {named(report.stray_files)}: nothing else is wrong"
    return f"delete {named(report.stray_files)}; then {fix}"


def named(keys: list[str], shown: int = 5) -> str:
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more (verify --json lists them)" if len(keys) > shown else "")


def expected_checksums(view: JobView, success: dict | None, shards: list[int]):
    """Each committed shard's sha256 as recorded when it was committed, and where: `_SUCCESS` of a
    finished job, else the sidecar written just before the commit (an interrupted job's shard rewritten
    since is named, not only seen as ids counted twice). A shard without either is not compared."""
    if success:
        listed = success.get("shards", {})
        return {k: listed.get(shard_format.shard_key(k)) for k in shards}, lambda k: "_SUCCESS"
    return (manifest.shard_checksums(view.storage, shards, read=sidecar_checksum),
            lambda k: f"its commit's sidecar, {sidecar_key(k)}")


def repair(damaged: list[int]) -> str:
    """The resume's repair, with the commits of damaged shards to delete first (the resume skips a commit)."""
    if not damaged:
        return REPAIR
    return (f"delete _SUCCESS (if there) and the damaged shards' Parquet files ({named([shard_format.shard_key(k) for k in damaged])}), "
            "then re-run the same submit: it samples those shards again, and any whose Parquet file or images are gone, with identical bytes")


def check_tar(view: JobView, key: str, shard_ids: dict[int, list[int]], report: VerifyReport) -> None:
    """A WebDataset tar holds exactly its shard's samples, each once: <id>.png and <id>.json, the json
    naming that id. A second copy of a member, or a stray one, is a duplicate to a WebDataset reader."""
    shard = shard_format.tar_index(key)
    if shard is None:
        report.problem(f"{key}: an image_key names a tar that is not one of the job's")
        return
    try:
        names = view.tar_names(key)
    except (StorageError, tarfile.TarError, OSError) as e:
        report.damaged(shard, f"{key}: not readable as a tar ({str(e).splitlines()[0]})")
        return
    expected = Counter(shard_format.image_name(i, ext) for i in shard_ids.get(shard, []) for ext in ("png", "json"))
    found = Counter(names)
    for name, n in sorted((found - expected).items()):
        report.damaged(shard, f"{key}: {'a second ' + name if name in expected else 'unexpected member ' + name}" + (f" ({n}x)" if n > 1 else ""))
    for name in sorted(expected - found):
        report.damaged(shard, f"{key}: member {name} missing")
    members = view.tar_members(key)
    for i in shard_ids.get(shard, []):
        name = shard_format.image_name(i, "json")
        if name in members and not _is_row_of(members[name], i):  # a missing one is reported above
            report.damaged(shard, f"{key}: {name} is not this sample's row")


def _is_row_of(data: bytes, sample_id: int) -> bool:
    try:
        return json.loads(data)["id"] == sample_id
    except (KeyError, ValueError, TypeError):
        return False
