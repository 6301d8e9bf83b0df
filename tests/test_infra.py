"""Cluster and scheduling manifests: parsed and validated, with the fields that matter checked."""
from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.30"


def test_ray_cluster_yaml_matches_rays_schema():
    schema = json.loads((resources.files("ray") / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    nodes = config["available_node_types"]
    head, gpu = nodes[config["head_node_type"]], nodes["gpu_worker"]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0  # no actors on the head
    assert gpu["resources"]["GPU"] == 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["node_config"]["InstanceType"].startswith("g5.")
    assert config["idle_timeout_minutes"] > 0 and config["docker"]["image"]


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "infra" / "kuberay" / name).read_text()) if d]


def nightly_rayjob(day: str) -> tuple[dict, str]:
    """The RayJob the CronJob's script applies, rendered for one date."""
    cron = next(d for d in manifests("nightly-cronjob.yaml") if d["kind"] == "CronJob")
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    body = re.search(r"<<YAML \| kubectl apply -f -\n(.*?)\nYAML", script, re.S).group(1)
    job_id = f"novarch-nightly-{day}"
    return yaml.safe_load(body.replace("$JOB_ID", job_id).replace("$DAY", day)), script


@pytest.mark.parametrize("doc", manifests("nightly-cronjob.yaml"), ids=lambda d: d["kind"])
def test_core_kinds_validate_against_kubernetes(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def check_rayjob(job: dict) -> None:
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("novarch-batch submit ") and "--job-id" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    worker = cluster["workerGroupSpecs"][0]
    assert worker["minReplicas"] == 0 and worker["maxReplicas"] >= 1
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    for pod in (cluster["headGroupSpec"]["template"], worker["template"]):
        assert pod["spec"]["serviceAccountName"] == "novarch-batch"  # IAM role via the service account
        assert "novarch-batch" in pod["spec"]["containers"][0]["image"]
        for container in pod["spec"]["containers"]:
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": [container]}}, K8S_VERSION, strict=True)


def test_rayjob_manifest():
    (job,) = manifests("rayjob.yaml")
    check_rayjob(job)


def test_nightly_job_id_comes_from_the_date():
    cron = next(d for d in manifests("nightly-cronjob.yaml") if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job, script = nightly_rayjob("20261126")
    check_rayjob(job)
    assert 'DAY=$(date -u +%Y%m%d)' in script and "kubectl apply" in script  # apply: a re-run updates, never duplicates
    assert job["metadata"]["name"] == "novarch-nightly-20261126"
    assert "--job-id novarch-nightly-20261126" in job["spec"]["entrypoint"]
    assert nightly_rayjob("20261126")[0] == job and nightly_rayjob("20261127")[0] != job


def test_scheduler_may_only_touch_rayjobs():
    role = next(d for d in manifests("nightly-cronjob.yaml") if d["kind"] == "Role")
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["get", "list", "create", "patch"]}]


def test_iam_policy_is_least_privilege():
    policy = json.loads((ROOT / "infra" / "iam-policy.json").read_text())
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    for statement in policy["Statement"]:
        resources_ = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        assert all(r.startswith("arn:aws:s3:::my-bucket") and "*" not in r.split(":::")[1].split("/")[0] for r in resources_)
        if statement["Action"] == ["s3:ListBucket"]:
            assert statement["Condition"]["StringLike"]["s3:prefix"]  # listing only under the job prefixes
        else:
            assert all("/datasets/" in r for r in resources_)


def test_dockerfile_builds_on_rays_gpu_image():
    text = (ROOT / "infra" / "Dockerfile").read_text()
    assert re.search(r"^FROM rayproject/ray:[\d.]+-py311-gpu$", text, re.M)
    assert "pip install" in text
