"""A breach drill that also reaches AWS, Kubernetes, an API token's provider, and restores clean.

The lab's database and application, plus: a moto server of our own with authentication on
(security groups, an EBS volume, an IAM user whose access key is "leaked" and kept in
Secrets Manager, the evidence bucket with Object Lock), kmock's Kubernetes emulator (a
deployment, its secret, events) and a Slack stand-in of our own whose bot token is re-issued
(the provider revokes the old token when it issues the new one). The drill must isolate,
preserve, rotate and prove each of them, then put the services back. The intruder also
deletes rows of ``shop.customers`` (bypassing foreign keys): the drill restores that table
as it was just before the intrusion, by point-in-time recovery from the lab's base backup
and WAL archive.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from lab.slack_standin import SlackStandIn

from .conftest import AUTH_ADMIN_KEY_ENV, AUTH_ADMIN_SECRET_ENV, REGION, BreachLab, Kube, MotoAuth

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

NS = "shop"
OLD_API_KEY = "dr-test-old-api-key-0123456789"
OLD_BOT_TOKEN = "xoxb-dr-test-old-bot-token-0123"
NEW_BOT_TOKEN = "xoxb-dr-test-new-bot-token-4567"
NEW_BOT_TOKEN_ENV = "DR_TEST_BREACH_NEW_BOT_TOKEN"
EVIDENCE_BUCKET = "dr-breach-evidence"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _seed_aws(moto: MotoAuth) -> dict[str, Any]:
    ec2 = moto.client("ec2")
    app_sg = ec2.create_security_group(GroupName="app", Description="app")["GroupId"]
    db_sg = ec2.create_security_group(GroupName="db", Description="db")["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=app_sg,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
             "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "public"}]},
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "IpRanges": [{"CidrIp": "10.9.1.0/24", "Description": "bastion"}]},
        ],
    )  # fmt: skip
    ec2.authorize_security_group_ingress(
        GroupId=db_sg,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
             "IpRanges": [{"CidrIp": "198.51.100.0/25", "Description": "attacker range"},
                          {"CidrIp": "10.0.0.0/8", "Description": "internal"}]},
        ],
    )  # fmt: skip
    volume = ec2.create_volume(AvailabilityZone=f"{REGION}a", Size=1)["VolumeId"]
    iam = moto.client("iam")
    iam.create_user(UserName="app-user")
    key = iam.create_access_key(UserName="app-user")["AccessKey"]
    sm = moto.client("secretsmanager")
    sm.create_secret(Name="app/aws-secret", SecretString=key["SecretAccessKey"])
    sm.create_secret(Name="app/aws-key-id", SecretString=key["AccessKeyId"])
    moto.client("s3").create_bucket(Bucket=EVIDENCE_BUCKET, ObjectLockEnabledForBucket=True)
    return {"app_sg": app_sg, "db_sg": db_sg, "volume": volume, "old_key": key}


def _seed_k8s(kube: Kube) -> None:
    kube.seed(
        "apps/v1/deployments", NS, "web",
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}}}}},
    )  # fmt: skip
    kube.seed(
        "v1/secrets", NS, "web-secrets",
        {"apiVersion": "v1", "kind": "Secret",
         "data": {"API_KEY": _b64(OLD_API_KEY), "BOT_TOKEN": _b64(OLD_BOT_TOKEN)}},
    )  # fmt: skip
    kube.seed(
        "v1/events", NS, "web.1",
        {"apiVersion": "v1", "kind": "Event", "type": "Warning", "reason": "Unhealthy",
         "message": "probe failed", "count": 3,
         "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": NS}},
    )  # fmt: skip


@pytest.fixture(scope="module")
def cloud_drill(
    breach_lab: BreachLab, moto_auth: MotoAuth, kube: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    seeded = _seed_aws(moto_auth)
    _seed_k8s(kube)
    folder = tmp_path_factory.mktemp("stores")
    token_file = folder / "bot-token"
    token_file.write_text(OLD_BOT_TOKEN + "\n")
    token_file.chmod(0o600)

    def mutate(data: dict[str, Any]) -> None:
        data["aws"] = {
            "region": REGION,
            "endpoint_url": moto_auth.endpoint,
            "access_key_id": {"env": AUTH_ADMIN_KEY_ENV},
            "secret_access_key": {"env": AUTH_ADMIN_SECRET_ENV},
        }
        data["kubernetes"] = {"kubeconfig": str(kube.kubeconfig), "context": "emu"}
        target = data["targets"]["lab"]
        target["evidence_repository"] = f"s3://{EVIDENCE_BUCKET}/lab"
        target["services"].append(
            {"kind": "kubernetes", "namespace": NS, "deployment": "web", "role": "reader"}
        )

    config = breach_lab.write_config("cloud.yaml", mutate)
    options = {
        "volume_ids": [seeded["volume"]],
        "security_groups": [seeded["app_sg"]],
        "keep_cidrs": ["10.9.0.0/16"],
        "block_cidrs": ["198.51.100.0/24"],
        "block_cidrs_in_groups": [seeded["db_sg"]],
        "isolate_pods": [{"namespace": NS, "pod_selector": {"app": "web"}}],
        "kubernetes_secrets": [{"namespace": NS, "name": "web-secrets", "key": "API_KEY"}],
        "access_keys": [
            {
                "user_name": "app-user",
                "key_id": seeded["old_key"]["AccessKeyId"],
                "secret_store": {"aws_secret": "app/aws-secret"},
                "key_id_store": {"aws_secret": "app/aws-key-id"},
            }
        ],
        "dump_tables": ["shop.customers"],
        "restore_tables": ["shop.customers"],
        # The lab's uploads live on the lab's own moto, not on this one (aws points here):
        # their restore is proven by test_breach_drill and test_breach_red.
        "restore_files": False,
    }
    with SlackStandIn(token=OLD_BOT_TOKEN) as provider, pytest.MonkeyPatch.context() as mp:
        mp.setenv(AUTH_ADMIN_KEY_ENV, moto_auth.admin_key_id)
        mp.setenv(AUTH_ADMIN_SECRET_ENV, moto_auth.admin_secret)
        mp.setenv(NEW_BOT_TOKEN_ENV, NEW_BOT_TOKEN)
        provider.token = NEW_BOT_TOKEN  # the provider re-issued the token: the old one is dead
        options["tokens"] = [
            {
                "name": "bot",
                "kind": "slack",
                "new_value": {"env": NEW_BOT_TOKEN_ENV},
                "base_url": provider.base_url,
                "stores": [
                    {"kubernetes_secret": f"{NS}/web-secrets/BOT_TOKEN"},
                    {"file": str(token_file)},
                ],
            }
        ]
        result = breach_lab.run_flow(options, config=config)
    yield {"result": result, "seeded": seeded, "token_file": token_file}


def _checks(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


def test_cloud_drill_passes(cloud_drill: dict[str, Any]) -> None:
    r = cloud_drill["result"]
    failed = [c for c in r["checks"] if not c["ok"] and c["critical"]]
    assert r["outcome"] == "passed", (r["reason"], failed)


def test_security_groups_revoked_blocked_and_restored(
    cloud_drill: dict[str, Any], moto_auth: MotoAuth
) -> None:
    r = cloud_drill["result"]
    seeded = cloud_drill["seeded"]
    checks = _checks(r)
    assert checks[f"contained: revoke inbound of {seeded['app_sg']}"]["ok"]
    assert checks[f"resumed: restore inbound of {seeded['app_sg']}"]["ok"]
    ec2 = moto_auth.client("ec2")
    groups = {g["GroupId"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}
    app_cidrs = {
        (p["FromPort"], ip["CidrIp"]) for p in groups[seeded["app_sg"]]["IpPermissions"]
        for ip in p["IpRanges"]
    }  # fmt: skip
    assert app_cidrs == {(443, "0.0.0.0/0"), (22, "10.9.1.0/24")}  # back as it was
    db_cidrs = {
        ip["CidrIp"] for p in groups[seeded["db_sg"]]["IpPermissions"] for ip in p["IpRanges"]
    }
    # The drill revoked the "attacker" range, then lifted its blocks (leaving the target as found).
    block = next(c for c in r["changes"] if c["action"] == "block-cidrs")
    assert [x["source"] for x in block["after"]["revoked"]] == ["198.51.100.0/25"]
    assert any(
        c["action"] == "restore-ingress" and c["object"] == seeded["db_sg"] for c in r["changes"]
    )
    assert db_cidrs == {"10.0.0.0/8", "198.51.100.0/25"}
    revoke = next(
        c
        for c in r["changes"]
        if c["action"] == "revoke-ingress" and c["object"] == seeded["app_sg"]
    )
    assert [x["source"] for x in revoke["after"]["revoked"]] == ["0.0.0.0/0"]  # bastion kept


def test_iam_key_rotated_and_proven(cloud_drill: dict[str, Any], moto_auth: MotoAuth) -> None:
    r = cloud_drill["result"]
    checks = _checks(r)
    old = cloud_drill["seeded"]["old_key"]
    name = f"iam-key app-user/{old['AccessKeyId']}"
    assert checks[f"{name}: old key rejected"]["ok"]
    assert checks[f"{name}: new key works"]["ok"]
    assert checks[f"{name}: aws-secret:app/aws-secret holds the new value"]["ok"]
    sm = moto_auth.client("secretsmanager")
    new_id = sm.get_secret_value(SecretId="app/aws-key-id")["SecretString"]
    new_secret = sm.get_secret_value(SecretId="app/aws-secret")["SecretString"]
    assert new_id != old["AccessKeyId"] and new_secret != old["SecretAccessKey"]
    keys = {k["AccessKeyId"]: k["Status"] for k in moto_auth.client("iam").list_access_keys(
        UserName="app-user")["AccessKeyMetadata"]}  # fmt: skip
    assert keys == {old["AccessKeyId"]: "Inactive", new_id: "Active"}
    sts = boto3.Session(
        aws_access_key_id=new_id, aws_secret_access_key=new_secret, region_name=REGION
    ).client("sts", endpoint_url=moto_auth.endpoint, config=Config(retries={"max_attempts": 1}))
    assert sts.get_caller_identity()["Arn"].endswith("/app-user")
    assert new_secret not in json.dumps(r)


def test_kubernetes_isolated_rotated_and_restored(cloud_drill: dict[str, Any], kube: Kube) -> None:
    r = cloud_drill["result"]
    checks = _checks(r)
    assert checks[f"contained: scale {NS}/web to 0"]["ok"]
    assert checks["contained: isolate pods shop {'app': 'web'}"]["ok"]
    assert checks[f"resumed: scale {NS}/web back"]["ok"]
    assert kube.get("apps/v1/deployments", NS, "web")["spec"]["replicas"] == 2
    assert kube.get("networking.k8s.io/v1/networkpolicies", NS, "dr-breach-isolate-0") is None
    created = [c for c in r["changes"] if c["action"] == "apply-isolation-policy"]
    assert created and created[0]["outcome"] == "created"
    data = kube.get("v1/secrets", NS, "web-secrets")["data"]
    api_key = base64.b64decode(data["API_KEY"]).decode()
    assert api_key != OLD_API_KEY and len(api_key) >= 40
    assert checks[
        f"kubernetes-secret {NS}/web-secrets/API_KEY: kubernetes-secret:{NS}/web-secrets/API_KEY holds the new value"
    ]["ok"]
    assert api_key not in json.dumps(r)


def test_slack_token_rotated_by_reference_and_proven(
    cloud_drill: dict[str, Any], kube: Kube
) -> None:
    r = cloud_drill["result"]
    checks = _checks(r)
    assert checks["slack-token bot: old token rejected"]["ok"]
    assert "invalid_auth" in checks["slack-token bot: old token rejected"]["detail"]
    assert checks["slack-token bot: new token works"]["ok"]
    data = kube.get("v1/secrets", NS, "web-secrets")["data"]
    assert base64.b64decode(data["BOT_TOKEN"]).decode() == NEW_BOT_TOKEN
    token_file: Path = cloud_drill["token_file"]
    assert token_file.read_text().strip() == NEW_BOT_TOKEN
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert NEW_BOT_TOKEN not in json.dumps(r) and OLD_BOT_TOKEN not in json.dumps(r)


def test_cloud_and_kubernetes_evidence_in_the_bundle(
    cloud_drill: dict[str, Any], moto_auth: MotoAuth, breach_lab: BreachLab
) -> None:
    r = cloud_drill["result"]
    ev = r["details"]["breach"]["evidence"]
    assert ev["stored"] and ev["verified"] and ev["complete"], ev
    assert ev["locked"] and ev["url"].startswith(f"s3://{EVIDENCE_BUCKET}/lab/")
    s3 = moto_auth.client("s3")
    prefix = ev["url"].removeprefix(f"s3://{EVIDENCE_BUCKET}/")
    keys = {o["Key"].removeprefix(prefix + "/") for o in s3.list_objects_v2(
        Bucket=EVIDENCE_BUCKET, Prefix=prefix)["Contents"]}  # fmt: skip
    seeded = cloud_drill["seeded"]
    for expected in (
        "manifest.json",
        "cloud/snapshots.json",
        f"cloud/security-groups/{seeded['app_sg']}.json",
        f"cloud/security-groups/{seeded['db_sg']}.json",
        f"kubernetes/{NS}/events.json",
        "postgres/dumps/app-tables.dump",
    ):
        assert expected in keys, keys
    snaps = json.loads(
        s3.get_object(Bucket=EVIDENCE_BUCKET, Key=f"{prefix}/cloud/snapshots.json")["Body"].read()
    )
    assert [s["volume_id"] for s in snaps] == [seeded["volume"]]
    tagged = moto_auth.client("ec2").describe_snapshots(
        Filters=[{"Name": "tag:dr:target", "Values": ["lab"]}]
    )["Snapshots"]
    assert [s["VolumeId"] for s in tagged] == [seeded["volume"]]
    dump = s3.get_object(Bucket=EVIDENCE_BUCKET, Key=f"{prefix}/postgres/dumps/app-tables.dump")[
        "Body"
    ].read()
    assert dump.startswith(b"PGDMP")
    # The drill left the lab as it found it: attacker range unblocked in pg_hba, app writing.
    assert breach_lab.hba_blocks() == []
    assert breach_lab.wait_app_writing()


def test_restore_clean_brings_the_table_back_as_before_the_intrusion(
    cloud_drill: dict[str, Any], breach_lab: BreachLab
) -> None:
    r = cloud_drill["result"]
    checks = _checks(r)
    breach = r["details"]["breach"]
    assert breach["drill_damage"] == {"shop.customers": "3 row(s) deleted"}
    assert checks["restored clean: shop.customers"]["ok"]
    assert checks["drill: shop.customers is as before the intrusion"]["ok"]
    restore = breach["restore"]
    assert restore["restore_to"] < breach["drill"]["planted_at"]
    assert restore["tables"]["shop.customers"]["rows"] > 0
    names = [p["name"] for p in r["phases"]]
    assert names.index("prove") < names.index("restore clean") < names.index("resume services")
    assert [a["step"].split(" ")[0] for a in r["approvals"]] == ["restore", "resume"]
    assert r["rpo_seconds"] is not None and 0 < r["rpo_seconds"] < 60
    assert "restore_to -> contained" in r["rpo_basis"]
    with breach_lab.primary_conn() as conn:
        rows = conn.execute("SELECT count(*) FROM shop.customers").fetchone()[0]
    assert rows == restore["tables"]["shop.customers"]["rows"]
