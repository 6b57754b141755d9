"""Old containers that held a rotated password are removed (issue 14)."""

from __future__ import annotations

from typing import Any

from tasks.containers.recreate import recreate_with_env, remove_stale_asides


class FakeContainer:
    def __init__(self, name: str, env: list[str], engine: FakeEngine) -> None:
        self.name = name
        self.id = f"id-{name}"
        self.status = "running"
        self.attrs: dict[str, Any] = {"Config": {"Env": env}}
        self._engine = engine

    def remove(self, force: bool = False) -> None:
        self._engine.items.pop(self.name)


class FakeEngine:
    """containers.get / containers.list(all, filters={"name": ...}) as the SDK answers."""

    def __init__(self) -> None:
        self.items: dict[str, FakeContainer] = {}
        self.containers = self

    def add(self, name: str, env: list[str]) -> None:
        self.items[name] = FakeContainer(name, env, self)

    def get(self, name: str) -> FakeContainer:
        return self.items[name]

    def list(self, all: bool = False, filters: dict[str, str] | None = None) -> list[Any]:
        part = (filters or {}).get("name", "")
        return [c for n, c in self.items.items() if part in n]


def test_asides_of_the_container_are_removed_and_nothing_else() -> None:
    engine = FakeEngine()
    engine.add("app", ["DB_PASSWORD=new"])
    engine.add("app-dr-old-1700000000", ["DB_PASSWORD=old"])
    engine.add("other-dr-old-1700000000", ["X=1"])
    engine.add("my-app-dr-old-1", ["X=1"])
    assert remove_stale_asides(engine, "app") == ["app-dr-old-1700000000"]  # type: ignore[arg-type]
    assert sorted(engine.items) == ["app", "my-app-dr-old-1", "other-dr-old-1700000000"]


def test_an_unchanged_recreate_still_removes_an_old_container() -> None:
    engine = FakeEngine()
    engine.add("app", ["DB_PASSWORD=new"])
    engine.add("app-dr-old-1700000000", ["DB_PASSWORD=old"])
    change = recreate_with_env(engine, "app", {"DB_PASSWORD": "new"})  # type: ignore[arg-type]
    assert change.outcome == "changed"
    assert change.after["removed_old_containers"] == ["app-dr-old-1700000000"]
    assert sorted(engine.items) == ["app"]
    assert recreate_with_env(engine, "app", {"DB_PASSWORD": "new"}).outcome == "unchanged"  # type: ignore[arg-type]


def test_a_recreate_killed_after_renaming_aside_is_put_back() -> None:
    """Killed between "rename aside" and "create": the next run finds the application again."""
    import docker.errors

    from tasks.containers.recreate import current_or_aside

    class Engine(FakeEngine):
        def get(self, name: str) -> FakeContainer:
            if name not in self.items:
                raise docker.errors.NotFound(f"no such container: {name}")
            return self.items[name]

        def list(self, all: bool = False, filters: Any = None, **kw: Any) -> list[Any]:
            return super().list(all=all, filters=filters)

    def rename(self: FakeContainer, new: str) -> None:
        self._engine.items[new] = self._engine.items.pop(self.name)
        self.name = new

    FakeContainer.rename = rename  # type: ignore[attr-defined]
    FakeContainer.reload = lambda self: None  # type: ignore[attr-defined]
    engine = Engine()
    engine.add("app-dr-old-1700000000", ["DB_HOST=old"])
    engine.add("app-dr-old-1700000100", ["DB_HOST=older-run"])
    back = current_or_aside(engine, "app")  # type: ignore[arg-type]
    assert back.name == "app" and back.attrs["Config"]["Env"] == ["DB_HOST=older-run"]
    assert sorted(engine.items) == ["app", "app-dr-old-1700000000"]
