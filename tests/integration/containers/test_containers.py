"""tasks/containers.py against a real engine: Podman's Docker API service."""

from __future__ import annotations

import logging
import sys
import time

import pytest

from dr.errors import ContainerError, PreconditionError
from lab.podman import (
    BindMount,
    PodmanService,
    ensure_busybox_image,
    host_python,
    run_python_container,
)
from tasks.containers.client import make_client
from tasks.containers.inspection import container_logs, find_containers, health
from tasks.containers.lifecycle import ensure_started, ensure_stopped, restart, restore_state
from tasks.containers.recreate import recreate_with_env

pytestmark = pytest.mark.integration


def _wait_for(predicate, timeout_seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _env(docker_client, name: str) -> dict[str, str]:
    container = docker_client.containers.get(name)
    return dict(item.partition("=")[::2] for item in container.attrs["Config"]["Env"])


def test_find_by_name_and_label(docker_client, run_busybox, run_labels, unique_name):
    app = unique_name("app")
    run_busybox(app, labels={"role": "app"}, environment={"API_TOKEN": "tok-very-secret"})
    run_busybox(app + "-2", labels={"role": "worker"})

    by_name = find_containers(docker_client, name=app)
    assert [s.name for s in by_name] == [app]  # exact name, not the "-2" one
    state = by_name[0]
    assert state.status == "running"
    assert state.running
    assert state.image == "localhost/dr-busybox:latest"
    assert state.labels["role"] == "app"
    assert state.command == ["sleep", "300"]
    assert state.restart_policy == "no"
    assert "API_TOKEN" in state.env_names
    assert state.env["API_TOKEN"] == "tok-very-secret"
    assert "tok-very-secret" not in repr(state)
    assert "tok-very-secret" not in str(state.model_dump())
    assert "tok-very-secret" not in state.model_dump_json()

    by_label = find_containers(docker_client, labels=run_labels)
    assert [s.name for s in by_label] == [app, app + "-2"]
    workers = find_containers(docker_client, labels={**run_labels, "role": "worker"})
    assert [s.name for s in workers] == [app + "-2"]
    assert find_containers(docker_client, name=app, labels={"role": "worker"}) == []


def test_ensure_stopped_records_state_and_restore_state_restores_exactly(
    docker_client, run_busybox, unique_name
):
    running, stopped = unique_name("running"), unique_name("stopped")
    run_busybox(running)
    run_busybox(stopped).stop(timeout=1)

    stop_running = ensure_stopped(docker_client, running, timeout_seconds=5)
    stop_stopped = ensure_stopped(docker_client, stopped, timeout_seconds=5)
    assert stop_running.outcome == "changed"
    assert stop_running.before["status"] == "running"
    assert stop_running.after["status"] == "exited"
    assert stop_running.undo == f"docker start {running}"
    assert stop_running.compensable
    assert stop_stopped.outcome == "unchanged"
    assert stop_stopped.before["status"] == "exited"
    assert docker_client.containers.get(running).status == "exited"

    restored_running = restore_state(docker_client, stop_running)
    restored_stopped = restore_state(docker_client, stop_stopped)
    assert restored_running.outcome == "changed"
    assert restored_stopped.outcome == "unchanged"
    assert docker_client.containers.get(running).status == "running"
    assert docker_client.containers.get(stopped).status == "exited"

    # ensure_started is the mirror image and is undone the same way.
    start_stopped = ensure_started(docker_client, stopped)
    assert start_stopped.outcome == "changed"
    assert ensure_started(docker_client, stopped).outcome == "unchanged"
    restore_state(docker_client, start_stopped)
    assert docker_client.containers.get(stopped).status == "exited"


def test_ensure_stopped_twice_is_unchanged(docker_client, run_busybox, unique_name):
    name = unique_name("twice")
    run_busybox(name)
    first = ensure_stopped(docker_client, name, timeout_seconds=5)
    second = ensure_stopped(docker_client, name, timeout_seconds=5)
    assert (first.outcome, second.outcome) == ("changed", "unchanged")
    # Undoing the no-op second stop must not start the container.
    restore_state(docker_client, second)
    assert docker_client.containers.get(name).status == "exited"


def test_restart_health_and_logs(docker_client, run_busybox, unique_name):
    name = unique_name("evidence")
    run_busybox(name, ["sh", "-c", "echo hello-evidence; exec sleep 300"])
    assert _wait_for(lambda: b"hello-evidence" in container_logs(docker_client, name))

    status = health(docker_client, name)
    assert status.running and status.health is None and status.ok

    started_at = docker_client.containers.get(name).attrs["State"]["StartedAt"]
    change = restart(docker_client, name, timeout_seconds=5)
    assert change.outcome == "changed" and not change.compensable
    assert docker_client.containers.get(name).attrs["State"]["StartedAt"] != started_at
    with pytest.raises(PreconditionError):
        restore_state(docker_client, change)

    ensure_stopped(docker_client, name, timeout_seconds=5)
    stopped = health(docker_client, name)
    assert not stopped.running and not stopped.ok
    assert stopped.exit_code is not None


def test_health_reports_healthcheck_status(docker_client, run_busybox, unique_name):
    name = unique_name("checked")
    run_busybox(name, healthcheck={"test": ["CMD", "true"], "interval": 1_000_000_000})
    status = health(docker_client, name)
    assert status.running
    # Podman runs healthchecks from systemd timers, absent here, so it may stay "starting".
    assert status.health in ("starting", "healthy")
    assert status.ok == (status.health == "healthy")


def test_recreate_with_env_changes_env_and_undo_restores_it(
    docker_client, run_busybox, unique_name, tmp_path, caplog
):
    name = unique_name("app")
    data = tmp_path / "data"
    data.mkdir()
    run_busybox(
        name,
        ["sleep", "301"],
        labels={"role": "app"},
        environment={"DB_HOST": "db-old.internal", "DB_PASSWORD": "pw-never-logged"},
        volumes={str(data): {"bind": "/data", "mode": "rw"}},
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 2},
    )
    old_id = docker_client.containers.get(name).id

    with caplog.at_level(logging.DEBUG):
        change = recreate_with_env(
            docker_client, name, {"DB_HOST": "db-new.internal", "DB_PORT": "6543"}
        )
    assert change.outcome == "changed"
    assert change.before["changed_keys"] == ["DB_HOST", "DB_PORT"]
    assert change.compensable and change.undo

    container = docker_client.containers.get(name)
    assert container.id != old_id
    assert container.status == "running"
    env = _env(docker_client, name)
    assert env["DB_HOST"] == "db-new.internal"
    assert env["DB_PORT"] == "6543"
    assert env["DB_PASSWORD"] == "pw-never-logged"
    assert container.attrs["Config"]["Cmd"] == ["sleep", "301"]
    assert container.attrs["Config"]["Labels"]["role"] == "app"
    assert container.attrs["HostConfig"]["NetworkMode"] == "none"
    assert container.attrs["HostConfig"]["RestartPolicy"]["MaximumRetryCount"] == 2
    assert container.attrs["HostConfig"]["Init"] is True
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts["/data"]["Source"] == str(data) and mounts["/data"]["RW"]
    assert len(docker_client.containers.list(all=True, filters={"name": name})) == 1

    # No value, old or new, reaches logs or the serialized record.
    recorded = repr(change) + change.model_dump_json() + str(change.model_dump()) + caplog.text
    for value in ("pw-never-logged", "db-old.internal", "db-new.internal", "6543"):
        assert value not in recorded

    again = recreate_with_env(docker_client, name, {"DB_HOST": "db-new.internal"})
    assert again.outcome == "unchanged"
    assert docker_client.containers.get(name).id == container.id

    undone = restore_state(docker_client, change)
    assert undone.outcome == "changed"
    env = _env(docker_client, name)
    assert env["DB_HOST"] == "db-old.internal"
    assert "DB_PORT" not in env  # did not exist before: removed again
    assert env["DB_PASSWORD"] == "pw-never-logged"
    assert docker_client.containers.get(name).status == "running"


def test_recreate_keeps_a_stopped_container_stopped(docker_client, run_busybox, unique_name):
    name = unique_name("idle")
    run_busybox(name, environment={"DB_HOST": "a"}).stop(timeout=1)
    change = recreate_with_env(docker_client, name, {"DB_HOST": "b"})
    assert change.outcome == "changed"
    assert docker_client.containers.get(name).status in ("created", "exited")
    assert _env(docker_client, name)["DB_HOST"] == "b"


def test_restore_of_a_serialized_recreate_refuses(docker_client, run_busybox, unique_name):
    name = unique_name("lost")
    run_busybox(name, environment={"DB_HOST": "a"})
    change = recreate_with_env(docker_client, name, {"DB_HOST": "b"})
    reloaded = type(change).model_validate_json(change.model_dump_json())
    assert reloaded.undo_data == {}
    with pytest.raises(PreconditionError, match="previous environment"):
        restore_state(docker_client, reloaded)


def test_unknown_name_is_a_permanent_error_listing_known_names(
    docker_client, run_busybox, unique_name
):
    known = unique_name("known")
    run_busybox(known)
    missing = unique_name("missing")
    for call in (
        lambda: ensure_stopped(docker_client, missing),
        lambda: health(docker_client, missing),
        lambda: recreate_with_env(docker_client, missing, {"A": "b"}),
    ):
        with pytest.raises(ContainerError) as info:
            call()
        assert not info.value.transient
        assert missing in str(info.value)
        assert known in str(info.value)


def test_unreachable_engine_is_transient(tmp_path):
    with pytest.raises(ContainerError) as info:
        make_client(f"unix://{tmp_path}/nothing.sock")
    assert info.value.transient


def test_python_container_runs_host_python(docker_client, run_labels, unique_name, tmp_path):
    """The lab's heartbeat writer runs the host's Python in a busybox container."""
    out = tmp_path / "out"
    out.mkdir()
    name = unique_name("python")
    script = (
        "import os, sys, pathlib, time; "
        "pathlib.Path('/out/result.txt').write_text(f'{sys.version_info[:2]} {os.environ[\"MARK\"]}'); "
        "print('written', flush=True); time.sleep(300)"
    )
    started = time.monotonic()
    run_python_container(
        docker_client,
        name,
        [host_python(), "-c", script],
        mounts_extra=[BindMount(out, "/out", read_only=False)],
        env={"MARK": "from-container"},
        labels=run_labels,
    )
    result = out / "result.txt"
    assert _wait_for(result.exists), container_logs(docker_client, name)
    logging.getLogger(__name__).info(
        "python container wrote after %.2f s", time.monotonic() - started
    )
    assert result.read_text() == f"{sys.version_info[:2]} from-container"
    assert b"written" in container_logs(docker_client, name)

    # init=True: the Python PID 1 gets SIGTERM handled, so stop does not wait the timeout.
    began = time.monotonic()
    change = ensure_stopped(docker_client, name, timeout_seconds=10)
    assert change.outcome == "changed"
    assert time.monotonic() - began < 5.0


def test_container_logs_since(docker_client, run_busybox, unique_name):
    name = unique_name("since")
    run_busybox(name, ["sh", "-c", "echo early; echo late; exec sleep 300"])
    assert _wait_for(lambda: b"late" in container_logs(docker_client, name))
    everything = container_logs(docker_client, name)
    assert b"early" in everything and b"late" in everything
    assert container_logs(docker_client, name, tail=1).strip() == b"late"
    future = int(time.time()) + 3600
    assert container_logs(docker_client, name, since=future) == b""


def test_podman_service_lifecycle_across_instances(podman_service, tmp_path):
    """`dr lab up` starts the service; `dr lab down`, another process, stops it by PID file."""
    base = tmp_path / "second"
    first = PodmanService(base)
    began = time.monotonic()
    url = first.start()
    started_in = time.monotonic() - began
    assert url == f"unix://{base}/podman.sock"
    assert first.start() == url  # idempotent: the running service is reused
    assert ensure_busybox_image(base) is True  # the podman CLI path, same storage
    assert ensure_busybox_image(first) is False

    other = PodmanService(base)  # e.g. a later `dr lab down`
    assert other.running() and other.pid() == first.pid()
    client = make_client(other.base_url)
    client.containers.run(
        "localhost/dr-busybox:latest",
        ["sleep", "300"],
        detach=True,
        name="left-running",
        network_mode="none",
        init=True,
    )
    client.close()
    began = time.monotonic()
    other.stop()
    stopped_in = time.monotonic() - began
    assert not first.running() and first.pid() is None
    assert not (base / "podman.sock").exists()
    assert other._helper_pids() == []  # no conmon left behind for the running container
    logging.getLogger(__name__).info(
        "second podman service: start %.2f s, stop with one container %.2f s",
        started_in,
        stopped_in,
    )


def test_failed_recreate_puts_the_old_container_back(
    docker_client, run_busybox, unique_name, monkeypatch
):
    import docker.errors
    from docker.models.containers import ContainerCollection

    name = unique_name("keep")
    run_busybox(name, environment={"DB_HOST": "a"})
    old_id = docker_client.containers.get(name).id

    def refuse(self, *args, **kwargs):
        raise docker.errors.APIError("engine refused", explanation="simulated failure")

    monkeypatch.setattr(ContainerCollection, "create", refuse)
    with pytest.raises(ContainerError, match="simulated failure"):
        recreate_with_env(docker_client, name, {"DB_HOST": "b"})
    monkeypatch.undo()

    container = docker_client.containers.get(name)
    assert container.id == old_id and container.name == name
    assert container.status == "running"
    assert _env(docker_client, name)["DB_HOST"] == "a"
    assert [c.name for c in find_containers(docker_client, labels=container.labels)] == [name]
