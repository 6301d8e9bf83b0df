"""Deployment files checked against the schemas of the versions they target, and against each other.

Targets: Ray 2.60's cluster launcher (its own ray-schema.json), KubeRay v1.7.0's RayCluster CRD
(tests/schemas/), Kubernetes 1.30 (kubernetes_validate, strict), AWS IAM policy grammar.
"""
from __future__ import annotations

import copy
import json
import re
import tomllib
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.30"
KUBERAY_VERSION = "v1.7.0"
RAY_VERSION = "2.60.0"
MANIFESTS = sorted((ROOT / "infra" / "kuberay").glob("*.yaml"))
IAM = ROOT / "infra" / "iam"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/novarch/novarch-batch:{VERSION}-gpu"


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


ALL_DOCS = [(p.name, d) for p in MANIFESTS for d in docs(p)]


def one(kind: str) -> dict:
    (doc,) = [d for _, d in ALL_DOCS if d["kind"] == kind]
    return doc


def ray_cluster_yaml() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


# --- Ray cluster launcher (ray up) -----------------------------------------------------------


def test_ray_cluster_yaml_matches_rays_schema():
    schema = json.loads((resources.files("ray") / "autoscaler" / "ray-schema.json").read_text())
    config = ray_cluster_yaml()
    jsonschema.validate(config, schema)
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0  # no actors on the head
    assert config["idle_timeout_minutes"] > 0 and config["docker"]["image"] == IMAGE
    assert config["provider"]["cache_stopped_nodes"] is False  # the head policy grants no Stop/StartInstances


def test_spot_gpu_workers_with_an_on_demand_floor():
    config = ray_cluster_yaml()
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    spot = {k: v for k, v in workers.items() if v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"}
    on_demand = {k: v for k, v in workers.items() if "InstanceMarketOptions" not in v["node_config"]}
    assert len(spot) == 1 and len(on_demand) == 1
    (spot_name, spot_type), (od_name, od_type) = *spot.items(), *on_demand.items()
    for node in (spot_type, od_type):
        assert node["resources"]["GPU"] == 1 and node["min_workers"] == 0 and node["max_workers"] >= 1
        assert node["node_config"]["InstanceType"].startswith("g5.")
    assert spot_type["resources"] == od_type["resources"]
    # Equal scores: Ray 2.60 takes the node type whose name sorts last (resource_demand_scheduler.get_nodes_for).
    assert spot_name > od_name
    assert spot_type["max_workers"] + od_type["max_workers"] <= config["max_workers"]


def test_one_ami_named_for_the_cuda_of_the_image():
    config = ray_cluster_yaml()
    amis = {n["node_config"]["ImageId"] for n in config["available_node_types"].values()}
    assert len(amis) == 1
    (ami,) = amis
    assert re.fullmatch(r"ami-([0-9a-f]{8}|[0-9a-f]{17})", ami)  # a real id, pinned: nothing to fill in first
    text = (ROOT / "ray_cluster.yaml").read_text()
    name = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)"
    assert f"{ami} is \"{name}" in text and "driver >= 580" in text and "CUDA 13.0" in text
    assert config["provider"]["region"] == "us-east-1"  # AMI ids are per region: the pinned one is us-east-1's
    runbook = (ROOT / "docs" / "deploy.md").read_text()
    assert f"--image-ids {ami}" in runbook  # step A3 checks the pinned id
    assert f"Name=name,Values={name}" in runbook and f"s/{ami}/$AMI_ID/" in runbook  # and re-pins it by name
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert "torch==${TORCH_VERSION}" in dockerfile and "ARG TORCH_VERSION=2.13.0" in dockerfile
    assert "CUDA 13.0" in dockerfile and "cuda.startswith('13.')" in dockerfile


def test_token_auth_on_every_ray_up_node():
    config = ray_cluster_yaml()
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # to the head, and from it to workers
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ray start") for c in starts)
    assert any("~/.ray/auth_token" in c and "exit 1" in c for c in config["head_setup_commands"])


# --- Image ---------------------------------------------------------------------------------


def test_dockerfile_checks_cuda_and_the_image_tag_follows_the_version():
    text = (ROOT / "infra" / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(RAY_VERSION)}-py311-gpu$", text, re.M)
    assert "torch.version.cuda" in text and "sys.exit(" in text
    assert text.index("torch==") < text.index("COPY")  # CUDA torch first, so the project's torch>=2.4 adds nothing
    script = (ROOT / "infra" / "build-image.sh").read_text()
    assert "pyproject.toml" in script and 'novarch-batch:${VERSION}-gpu' in script
    images = {c["image"] for _, d in ALL_DOCS for c in containers(d)}
    assert images == {IMAGE}


def dockerignored(patterns: list[str], path: str) -> bool:
    import fnmatch

    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in path.split("/")) or fnmatch.fnmatch(path, pattern[3:])
        else:
            hit = any(fnmatch.fnmatch("/".join(path.split("/")[: i + 1]), pattern) for i in range(path.count("/") + 1))
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_build_context_to_the_sources():
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    for junk in (".venv/bin/python", ".git/HEAD", "novarch-out/job/_SUCCESS", "pipeline/__pycache__/cli.cpython-311.pyc",
                 ".pytest_cache/v", "novarch_batch.egg-info/PKG-INFO", "runs/x.png"):
        assert dockerignored(patterns, junk), junk
    needed = ["pyproject.toml", "README.md", "pipeline/cli.py", "workers/remote.py", "training/export.py"]
    needed += [str(p.relative_to(ROOT)) for p in (ROOT / "workers" / "models").rglob("*") if p.is_file()]
    for keep in needed:
        assert not dockerignored(patterns, keep), keep


# --- KubeRay and Kubernetes manifests ------------------------------------------------------


def strict(schema):
    """The CRD schema as `kubectl apply` (strict field validation) reads it: unknown fields are errors."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    return schema


RAYCLUSTER_SCHEMA = strict(json.loads((ROOT / "tests" / "schemas" / f"kuberay-{KUBERAY_VERSION}-raycluster.json").read_text()))


def pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] == "RayCluster":
        spec = doc["spec"]
        return [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def containers(doc: dict) -> list[dict]:
    return [c for pod in pod_specs(doc) for c in pod.get("containers", []) + pod.get("initContainers", [])]


@pytest.mark.parametrize("name,doc", ALL_DOCS, ids=[f"{n}:{d['kind']}" for n, d in ALL_DOCS])
def test_every_manifest_validates(name, doc):
    if doc["apiVersion"].startswith("ray.io/"):
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster", "only RayCluster's CRD schema is kept in tests/schemas"
        jsonschema.validate(doc, RAYCLUSTER_SCHEMA)
        for pod in pod_specs(doc):  # the CRD embeds the pod template schema; check it strictly against Kubernetes too
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": pod}, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert doc["kind"] == "Namespace" or doc["metadata"]["namespace"] == "novarch"


def test_strict_crd_schema_catches_a_misspelt_field():
    cluster = copy.deepcopy(one("RayCluster"))
    cluster["spec"]["authOption"] = cluster["spec"].pop("authOptions")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cluster, RAYCLUSTER_SCHEMA)


def defined_objects() -> set[tuple[str, str]]:
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in ALL_DOCS}
    for _, d in ALL_DOCS:
        auth = d.get("spec", {}).get("authOptions") if d["kind"] == "RayCluster" else None
        if auth and auth.get("mode", "token") == "token" and not auth.get("secretName") and not auth.get("enableK8sTokenAuth"):
            # KubeRay v1.7.0 (raycluster_controller.go reconcileAuthSecret) creates Secret <cluster name>, key auth_token.
            defined.add(("Secret", d["metadata"]["name"]))
    return defined


def referenced_objects() -> set[tuple[str, str]]:
    refs = set()
    for _, d in ALL_DOCS:
        for pod in pod_specs(d):
            refs.add(("ServiceAccount", pod.get("serviceAccountName", "default")))
            for volume in pod.get("volumes", []):
                if "secret" in volume:
                    refs.add(("Secret", volume["secret"]["secretName"]))
        for c in containers(d):
            for env in c.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    refs.add(("Secret", env["valueFrom"]["secretKeyRef"]["name"]))
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    refs.add(("Secret", src["secretRef"]["name"]))
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            refs.add((d["roleRef"]["kind"], d["roleRef"]["name"]))
            refs.update((s["kind"], s["name"]) for s in d["subjects"] if s["kind"] == "ServiceAccount")
    return refs


def test_every_referenced_service_account_role_and_secret_is_defined():
    missing = referenced_objects() - defined_objects()
    assert not missing, f"referenced but defined nowhere: {sorted(missing)}"
    assert ("Secret", "novarch-batch") in referenced_objects()  # the CronJob's token really comes from the RayCluster's Secret


def test_raycluster_has_token_auth_autoscaling_and_irsa():
    cluster = one("RayCluster")
    spec = cluster["spec"]
    assert spec["authOptions"] == {"mode": "token"} and spec["rayVersion"] == RAY_VERSION
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 == gpu["replicas"] and gpu["maxReplicas"] >= 1
    worker = gpu["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    sa = next(d for _, d in ALL_DOCS if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "novarch-batch")
    assert re.fullmatch(r"arn:aws:iam::ACCOUNT_ID:role/novarch-batch-irsa", sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
    for pod in pod_specs(cluster):
        assert pod["serviceAccountName"] == "novarch-batch"
    trust = json.loads((IAM / "irsa-trust-policy.json").read_text())
    (statement,) = trust["Statement"]
    assert statement["Condition"]["StringEquals"]["OIDC_PROVIDER:sub"] == "system:serviceaccount:novarch:novarch-batch"


def test_gpu_pods_fit_the_eks_gpu_node_groups():
    eks = yaml.safe_load((ROOT / "infra" / "eks" / "cluster.yaml").read_text())
    assert eks["metadata"]["version"] == K8S_VERSION
    groups = {g["name"]: g for g in eks["managedNodeGroups"]}
    spot, on_demand = groups["gpu-spot"], groups["gpu-ondemand"]
    assert spot.get("spot") is True and not on_demand.get("spot")
    tolerations = one("RayCluster")["spec"]["workerGroupSpecs"][0]["template"]["spec"]["tolerations"]
    for group in (spot, on_demand):
        assert group["minSize"] == 0 and group["propagateASGTags"] is True
        for taint in group["taints"]:
            assert any(t["key"] == taint["key"] and t["effect"] == taint["effect"] and t["operator"] == "Exists" for t in tolerations)
    priorities = yaml.safe_load((ROOT / "infra" / "eks" / "cluster-autoscaler-values.yaml").read_text())
    assert priorities["extraArgs"]["expander"] == "priority"
    ranked = sorted(priorities["expanderPriorities"].items(), reverse=True)
    assert re.fullmatch(ranked[0][1][0], "eks-gpu-spot-abc") and re.fullmatch(ranked[1][1][0], "eks-gpu-ondemand-abc")


def test_cronjob_deadlines_ttl_and_no_privileges():
    cron = one("CronJob")
    spec, job = cron["spec"], cron["spec"]["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] == "Etc/UTC"
    assert spec["startingDeadlineSeconds"] > 0 and job["activeDeadlineSeconds"] > 0 and job["ttlSecondsAfterFinished"] > 0
    minute, hour = spec["schedule"].split()[:2]
    # Every try of a night must compute the same UTC date: the latest start plus the deadline ends before midnight.
    assert int(hour) * 3600 + int(minute) * 60 + spec["startingDeadlineSeconds"] + job["activeDeadlineSeconds"] < 24 * 3600
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert not [d for _, d in ALL_DOCS if d["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    (container,) = pod["containers"]
    assert container["command"] == ["/bin/sh", "-c"] and "kubectl" not in container["args"][0]
    assert 'JOB_ID="nightly-$DAY"' in container["args"][0] and "DAY=$(date -u +%Y%m%d)" in container["args"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["NOVARCH_CLUSTER"]["value"] == "http://novarch-batch-head-svc.novarch.svc.cluster.local:8265"  # KubeRay: <cluster>-head-svc
    assert not any(name.startswith("AWS_") for name in env)


# --- IAM -----------------------------------------------------------------------------------


def policy(name: str) -> dict:
    return json.loads((IAM / name).read_text())


def statements(doc: dict) -> list[dict]:
    assert doc["Version"] == "2012-10-17"
    out = []
    for s in doc["Statement"]:
        assert s["Effect"] == "Allow" and set(s) <= {"Sid", "Effect", "Action", "Resource", "Condition", "Principal"}
        out.append({**s, "Action": [s["Action"]] if isinstance(s["Action"], str) else s["Action"],
                    "Resource": [s.get("Resource")] if isinstance(s.get("Resource"), str) else s.get("Resource")})
    return out


def allows(doc: dict, action: str) -> list[dict]:
    import fnmatch

    return [s for s in statements(doc) if any(fnmatch.fnmatchcase(action, a) for a in s["Action"])]


def test_head_policy_launches_and_terminates_workers_and_passes_only_the_worker_role():
    head = policy("head-policy.json")
    for action in ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances", "ec2:DescribeInstanceTypes"):
        assert allows(head, action), action
    for action in ("ec2:StopInstances", "ec2:StartInstances", "ec2:DeleteVolume", "s3:GetObject", "iam:CreateRole", "iam:AttachRolePolicy", "sts:AssumeRole"):
        assert not allows(head, action), action
    assert all(":" in a and a.split(":", 1)[0] in ("ec2", "iam") and a != "ec2:*" for s in statements(head) for a in s["Action"])
    (terminate,) = allows(head, "ec2:TerminateInstances")
    cluster_name = ray_cluster_yaml()["cluster_name"]
    assert terminate["Condition"] == {"StringEquals": {"ec2:ResourceTag/ray-cluster-name": cluster_name}}
    (pass_role,) = allows(head, "iam:PassRole")
    assert pass_role["Action"] == ["iam:PassRole"] and pass_role["Resource"] == ["arn:aws:iam::ACCOUNT_ID:role/novarch-batch-worker"]
    worker_types = [n for k, n in ray_cluster_yaml()["available_node_types"].items() if k != "head"]
    assert {n["node_config"]["IamInstanceProfile"]["Name"] for n in worker_types} == {"novarch-batch-worker"}


def test_worker_policy_is_s3_on_the_output_prefix_only():
    worker = policy("worker-policy.json")
    actions = {a for s in statements(worker) for a in s["Action"]}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    assert not allows(worker, "ec2:RunInstances") and not allows(worker, "iam:PassRole")
    for s in statements(worker):
        if s["Action"] == ["s3:ListBucket"]:
            assert s["Resource"] == ["arn:aws:s3:::my-bucket"]
            assert all(p.startswith("datasets/") for p in s["Condition"]["StringLike"]["s3:prefix"])
        else:
            assert all(r.startswith("arn:aws:s3:::my-bucket/datasets/") and r.endswith("/*") for r in s["Resource"])
    nightly_out = {e["name"]: e for e in one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}["NOVARCH_OUT"]["value"]
    bucket, prefix = nightly_out.removeprefix("s3://").split("/", 1)
    assert f"arn:aws:s3:::{bucket}/{prefix}/*" in {r for s in statements(worker) for r in s["Resource"]}


def test_trust_policies_and_the_runbook_attach_the_split():
    assert statements(policy("ec2-trust-policy.json"))[0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert statements(policy("irsa-trust-policy.json"))[0]["Action"] == ["sts:AssumeRoleWithWebIdentity"]
    runbook = (ROOT / "docs" / "deploy.md").read_text()
    attached: dict[str, set[str]] = {}
    for role, doc in re.findall(r"aws iam put-role-policy --role-name (\S+) --policy-name \S+ --policy-document file://\$R/(\S+\.json)", runbook):
        attached.setdefault(role, set()).add(doc)
    assert attached == {
        "novarch-batch-head": {"head-policy.json", "worker-policy.json"},  # the driver runs on the head and writes S3
        "novarch-batch-worker": {"worker-policy.json"},
        "novarch-batch-irsa": {"worker-policy.json"},
    }
    for path in re.findall(r"(infra/[\w./-]+\.(?:json|yaml|sh))", runbook):
        assert (ROOT / path).exists(), path
