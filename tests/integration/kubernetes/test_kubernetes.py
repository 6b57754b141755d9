"""tasks/kubernetes.py against kmock's KubernetesEmulator, through a kubeconfig on loopback."""

from __future__ import annotations

import base64
import logging
import socket

import pytest
import yaml

from dr.changes import Change
from dr.errors import KubernetesError, PreconditionError, redact
from tasks.kubernetes.client import make_client
from tasks.kubernetes.config_maps import patch_config_map_key, read_config_map
from tasks.kubernetes.deployments import (
    RESTARTED_AT_ANNOTATION,
    read_deployment,
    restore_scale,
    rollout_restart,
    scale_deployment,
)
from tasks.kubernetes.events import list_events
from tasks.kubernetes.network_policies import (
    MANAGED_BY_LABEL,
    apply_isolation_policy,
    remove_isolation_policy,
)
from tasks.kubernetes.secrets import read_secret, replace_secret_key, restore_secret_key
from tasks.kubernetes.undo import undo_change

pytestmark = pytest.mark.integration

DEPLOYMENTS = "apps/v1/deployments"
SECRETS = "v1/secrets"
POLICIES = "networking.k8s.io/v1/networkpolicies"
NAMESPACE = "dr-test"  # the kubeconfig context's namespace (conftest.py)


def deployment(name: str, replicas: int, labels: dict[str, str] | None = None) -> dict:
    """A Deployment body complete enough for the client's model validation."""
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": name, "image": f"example/{name}:1"}]},
            },
        },
    }


def _writes(k8s_emulator) -> list[tuple[str, str]]:
    return [(m, p) for m, p in k8s_emulator.request_methods() if m != "GET"]


def test_make_client_uses_the_kubeconfig_context(kubeconfig, k8s_emulator):
    api = make_client(kubeconfig, "dr-test")
    try:
        assert api.configuration.host == k8s_emulator.url
        assert "not-a-real-token" in str(api.configuration.api_key.get("BearerToken", ""))
    finally:
        api.close()
    with pytest.raises(KubernetesError, match="no-such-context"):
        make_client(kubeconfig, "no-such-context")


def test_scale_and_restore(k8s_api, k8s_emulator):
    k8s_emulator.seed(DEPLOYMENTS, NAMESPACE, "web", deployment("web", 3))

    change = scale_deployment(k8s_api, NAMESPACE, "web", 0)
    assert change.outcome == "updated"
    assert change.object == f"{NAMESPACE}/web"
    assert change.before == {"replicas": 3} and change.after == {"replicas": 0}
    assert change.undo == f"kubectl -n {NAMESPACE} scale deployment/web --replicas=3"
    assert k8s_emulator.object(DEPLOYMENTS, NAMESPACE, "web")["spec"]["replicas"] == 0
    assert read_deployment(k8s_api, NAMESPACE, "web").replicas == 0

    restored = restore_scale(k8s_api, change)
    assert restored.outcome == "updated"
    assert k8s_emulator.object(DEPLOYMENTS, NAMESPACE, "web")["spec"]["replicas"] == 3
    # The rest of the object is untouched by the patch.
    assert k8s_emulator.object(DEPLOYMENTS, NAMESPACE, "web")["spec"]["selector"] == {
        "matchLabels": {"app": "web"}
    }


def test_scale_to_the_same_count_is_unchanged_and_writes_nothing(k8s_api, k8s_emulator):
    k8s_emulator.seed(DEPLOYMENTS, NAMESPACE, "api", deployment("api", 2))
    change = scale_deployment(k8s_api, NAMESPACE, "api", 2)
    assert change.outcome == "unchanged"
    assert _writes(k8s_emulator) == []
    assert restore_scale(k8s_api, change).outcome == "unchanged"
    assert _writes(k8s_emulator) == []


def test_rollout_restart_sets_the_annotation(k8s_api, k8s_emulator):
    k8s_emulator.seed(DEPLOYMENTS, NAMESPACE, "web", deployment("web", 2))
    change = rollout_restart(k8s_api, NAMESPACE, "web")
    assert change.outcome == "updated" and not change.compensable
    template = k8s_emulator.object(DEPLOYMENTS, NAMESPACE, "web")["spec"]["template"]
    stamp = template["metadata"]["annotations"][RESTARTED_AT_ANNOTATION]
    assert stamp == change.after["restarted_at"]
    assert stamp.endswith("Z") and "T" in stamp
    assert template["metadata"]["labels"] == {"app": "web"}  # merged, not replaced
    assert read_deployment(k8s_api, NAMESPACE, "web").restarted_at == stamp
    with pytest.raises(PreconditionError):
        undo_change(k8s_api, change)


def test_secret_read_and_replace_keep_values_out_of_records(k8s_api, k8s_emulator, caplog):
    old, new = "old-pass-5f3a9c", "new-pass-8d2e71"
    k8s_emulator.seed(
        SECRETS,
        NAMESPACE,
        "db",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "data": {
                "password": base64.b64encode(old.encode()).decode(),
                "user": base64.b64encode(b"app").decode(),
            },
        },
    )
    with caplog.at_level(logging.DEBUG):
        assert read_secret(k8s_api, NAMESPACE, "db") == {"password": old, "user": "app"}
        change = replace_secret_key(k8s_api, NAMESPACE, "db", "password", new)
    assert change.outcome == "updated"
    assert change.before == {"key": "password", "existed": True}
    assert change.compensable
    stored = k8s_emulator.object(SECRETS, NAMESPACE, "db")["data"]
    assert base64.b64decode(stored["password"]).decode() == new
    assert base64.b64decode(stored["user"]).decode() == "app"  # other keys kept

    records = [
        repr(change),
        str(change),
        str(change.model_dump()),
        change.model_dump_json(),
        change.summary(),
        caplog.text,
    ]
    for text in records:
        assert old not in text and new not in text
    assert redact(f"password is {old}") == "password is ***"  # registered for redaction

    assert replace_secret_key(k8s_api, NAMESPACE, "db", "password", new).outcome == "unchanged"

    restored = restore_secret_key(k8s_api, change)
    assert restored.outcome == "updated"
    assert read_secret(k8s_api, NAMESPACE, "db")["password"] == old

    # Once serialized, the old value is gone: restoring refuses instead of guessing.
    reloaded = Change.model_validate_json(change.model_dump_json())
    with pytest.raises(PreconditionError, match="previous value"):
        restore_secret_key(k8s_api, reloaded)


def test_new_secret_key_is_removed_on_undo(k8s_api, k8s_emulator):
    k8s_emulator.seed(
        SECRETS, NAMESPACE, "tokens", {"data": {"a": base64.b64encode(b"x").decode()}}
    )
    change = replace_secret_key(k8s_api, NAMESPACE, "tokens", "b", "value-b-123")
    assert change.before == {"key": "b", "existed": False}
    assert set(read_secret(k8s_api, NAMESPACE, "tokens")) == {"a", "b"}
    undo_change(k8s_api, change)
    assert read_secret(k8s_api, NAMESPACE, "tokens") == {"a": "x"}


def test_config_map_patch_and_undo(k8s_api, k8s_emulator):
    k8s_emulator.seed(
        "v1/configmaps", NAMESPACE, "app", {"data": {"DB_HOST": "db-a", "MODE": "rw"}}
    )
    change = patch_config_map_key(k8s_api, NAMESPACE, "app", "DB_HOST", "db-b")
    assert change.outcome == "updated"
    assert change.before == {"key": "DB_HOST", "value": "db-a"}
    assert read_config_map(k8s_api, NAMESPACE, "app") == {"DB_HOST": "db-b", "MODE": "rw"}
    assert patch_config_map_key(k8s_api, NAMESPACE, "app", "DB_HOST", "db-b").outcome == (
        "unchanged"
    )
    undo_change(k8s_api, change)
    assert read_config_map(k8s_api, NAMESPACE, "app") == {"DB_HOST": "db-a", "MODE": "rw"}


def test_isolation_policy_apply_twice_then_remove(k8s_api, k8s_emulator):
    selector = {"app": "web", "tier": "frontend"}
    first = apply_isolation_policy(k8s_api, NAMESPACE, selector)
    assert first.outcome == "created"
    assert first.undo == f"kubectl -n {NAMESPACE} delete networkpolicy dr-isolate"
    stored = k8s_emulator.object(POLICIES, NAMESPACE, "dr-isolate")
    assert stored["spec"]["podSelector"] == {"matchLabels": selector}
    assert sorted(stored["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    assert not stored["spec"].get("ingress") and not stored["spec"].get("egress")
    assert stored["metadata"]["labels"][MANAGED_BY_LABEL] == "dr-pipelines"

    second = apply_isolation_policy(k8s_api, NAMESPACE, selector)
    assert second.outcome == "unchanged"

    # Another selector replaces the old one (old labels nulled out, not merged in).
    third = apply_isolation_policy(k8s_api, NAMESPACE, {"app": "api"})
    assert third.outcome == "updated"
    stored = k8s_emulator.object(POLICIES, NAMESPACE, "dr-isolate")
    assert stored["spec"]["podSelector"]["matchLabels"] == {"app": "api"}

    removed = remove_isolation_policy(k8s_api, NAMESPACE, "dr-isolate")
    assert removed.outcome == "deleted"
    assert removed.before == {"pod_selector": {"app": "api"}}
    assert k8s_emulator.object(POLICIES, NAMESPACE, "dr-isolate") is None
    assert remove_isolation_policy(k8s_api, NAMESPACE, "dr-isolate").outcome == "unchanged"


def test_isolation_refuses_empty_selector_and_foreign_policies(k8s_api, k8s_emulator):
    with pytest.raises(PreconditionError, match="empty pod selector"):
        apply_isolation_policy(k8s_api, NAMESPACE, {})
    k8s_emulator.seed(
        POLICIES,
        NAMESPACE,
        "dr-isolate",
        {"spec": {"podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Ingress"]}},
    )
    with pytest.raises(PreconditionError, match="not created by DR pipelines"):
        apply_isolation_policy(k8s_api, NAMESPACE, {"app": "x"})
    with pytest.raises(PreconditionError, match="not created by DR pipelines"):
        remove_isolation_policy(k8s_api, NAMESPACE)
    assert k8s_emulator.object(POLICIES, NAMESPACE, "dr-isolate") is not None


def test_list_events(k8s_api, k8s_emulator):
    assert list_events(k8s_api, NAMESPACE) == []
    for index, (reason, when) in enumerate(
        [("Killing", "2026-01-01T10:00:05Z"), ("Scheduled", "2026-01-01T10:00:00Z")]
    ):
        k8s_emulator.seed(
            "v1/events",
            NAMESPACE,
            f"web.{index}",
            {
                "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": NAMESPACE},
                "reason": reason,
                "message": f"{reason} pod web-1",
                "type": "Normal",
                "count": 1,
                "firstTimestamp": when,
                "lastTimestamp": when,
            },
        )
    events = list_events(k8s_api, NAMESPACE)
    assert [e["reason"] for e in events] == ["Scheduled", "Killing"]  # oldest first
    assert events[0]["object"] == "Pod/web-1"
    assert events[0]["message"] == "Scheduled pod web-1"
    assert events[0]["last_seen"].startswith("2026-01-01T10:00:00")


def test_not_found_is_permanent_and_names_the_object(k8s_api):
    cases = [
        (lambda: scale_deployment(k8s_api, NAMESPACE, "ghost", 1), f"deployment {NAMESPACE}/ghost"),
        (lambda: rollout_restart(k8s_api, NAMESPACE, "ghost"), f"deployment {NAMESPACE}/ghost"),
        (lambda: read_secret(k8s_api, NAMESPACE, "ghost"), f"secret {NAMESPACE}/ghost"),
        (
            lambda: replace_secret_key(k8s_api, NAMESPACE, "ghost", "k", "value-1234"),
            f"secret {NAMESPACE}/ghost",
        ),
        (lambda: read_config_map(k8s_api, NAMESPACE, "ghost"), f"configmap {NAMESPACE}/ghost"),
    ]
    for call, named in cases:
        with pytest.raises(KubernetesError) as info:
            call()
        assert not info.value.transient
        assert named in str(info.value)
        assert "404" in str(info.value)


def test_unreachable_api_is_transient(tmp_path):
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    api = make_client(path, None)
    try:
        with pytest.raises(KubernetesError) as info:
            scale_deployment(api, NAMESPACE, "web", 1)
        assert info.value.transient
        assert f"deployment {NAMESPACE}/web" in str(info.value)
    finally:
        api.close()
