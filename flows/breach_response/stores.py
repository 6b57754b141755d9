"""Where credentials live: read and write one store (Prefect block, file, AWS, Kubernetes)."""

from __future__ import annotations

from pydantic import SecretStr

from dr.changes import Change
from flows.breach_response.options import SecretStore
from flows.breach_response.systems import Systems
from tasks.aws import secrets_manager
from tasks.kubernetes import secrets as kubernetes_secrets
from tasks.secrets import files as secrets_files
from tasks.secrets import prefect_blocks
from tasks.secrets import prefect_blocks as secrets_prefect_blocks


def read_store(systems: Systems, store: SecretStore) -> str | None:
    """The value a store holds now (None when it holds none)."""
    if store.prefect_secret:
        return secrets_prefect_blocks.read_prefect_secret_task(store.prefect_secret)
    if store.file:
        return secrets_files.read_secret_file_task(store.file)
    if store.aws_secret:
        value = secrets_manager.read_secret_task(systems.aws("secretsmanager"), store.aws_secret)
        return value.get_secret_value()
    assert store.kubernetes_secret is not None
    ns, name, key = store.kubernetes_secret.split("/")
    return kubernetes_secrets.read_secret_task(systems.k8s, ns, name).get(key)


def write_store(systems: Systems, store: SecretStore, value: SecretStr) -> Change:
    """Put a new value in a store."""
    if store.prefect_secret:
        return prefect_blocks.write_prefect_secret_task(
            store.prefect_secret, value.get_secret_value()
        )
    if store.file:
        return secrets_files.write_secret_file_task(store.file, value.get_secret_value())
    if store.aws_secret:
        return secrets_manager.put_secret_value_task(
            systems.aws("secretsmanager"), store.aws_secret, value
        )
    assert store.kubernetes_secret is not None
    ns, name, key = store.kubernetes_secret.split("/")
    return kubernetes_secrets.replace_secret_key_task(
        systems.k8s, ns, name, key, value.get_secret_value()
    )
