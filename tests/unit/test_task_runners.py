"""The task runner option: threads by default, Dask when the environment asks for it."""

from __future__ import annotations

from typing import Any

import pytest

from dr.errors import ConfigError


def test_threads_by_default() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    from deployments.task_runners import configured_task_runner

    assert isinstance(configured_task_runner({}), ThreadPoolTaskRunner)
    assert isinstance(configured_task_runner({"DR_TASK_RUNNER": "thread"}), ThreadPoolTaskRunner)


def test_dask_local_cluster_or_existing_scheduler() -> None:
    from prefect_dask import DaskTaskRunner

    from deployments.task_runners import configured_task_runner

    local = configured_task_runner({"DR_TASK_RUNNER": "dask", "DR_DASK_WORKERS": "3"})
    assert isinstance(local, DaskTaskRunner)
    assert local.cluster_kwargs["n_workers"] == 3
    assert local.cluster_kwargs["processes"] is False
    procs = configured_task_runner({"DR_TASK_RUNNER": "dask", "DR_DASK_PROCESSES": "true"})
    assert procs.cluster_kwargs["processes"] is True
    remote = configured_task_runner({"DR_TASK_RUNNER": "Dask", "DR_DASK_ADDRESS": "tcp://s:8786"})
    assert remote.address == "tcp://s:8786"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"DR_TASK_RUNNER": "ray"}, "DR_TASK_RUNNER"),
        ({"DR_TASK_RUNNER": "dask", "DR_DASK_WORKERS": "0"}, "DR_DASK_WORKERS"),
        ({"DR_TASK_RUNNER": "dask", "DR_DASK_WORKERS": "two"}, "DR_DASK_WORKERS"),
    ],
)
def test_bad_settings_are_config_errors(env: dict[str, str], key: str) -> None:
    from deployments.task_runners import configured_task_runner

    with pytest.raises(ConfigError, match=key):
        configured_task_runner(env)


def test_missing_prefect_dask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from deployments.task_runners import make_task_runner

    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"dr-pipelines\[dask\]"):
        make_task_runner("dask")


def test_with_task_runner_keeps_the_flow_name() -> None:
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from deployments.task_runners import make_task_runner, with_task_runner

    @flow(name="verify-many")
    def verify_many() -> None:
        return None

    wrapped: Any = with_task_runner(verify_many, make_task_runner("dask"))
    assert wrapped.name == "verify-many"
    assert isinstance(wrapped.task_runner, DaskTaskRunner)
