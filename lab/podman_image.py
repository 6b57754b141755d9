"""The lab's container image and how a Python program runs in it (on the lab's Podman).

No registry can be reached from the lab: the image is the host's static busybox, and a
Python program runs with the host's interpreter and libraries bind-mounted read-only.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # the docker SDK is imported by tasks/containers.py only
    from docker import DockerClient
    from docker.models.containers import Container

from lab.podman import (
    BUSYBOX_PATH,
    DEFAULT_IMAGE,
    SYSTEM_PYTHON_MOUNTS,
    PodmanError,
    PodmanService,
    _is_static_elf,
)

__all__ = [
    "BindMount",
    "default_python_paths",
    "ensure_busybox_image",
    "host_python",
    "python_container_mounts",
    "run_python_container",
]

log = logging.getLogger("lab.podman")


# --------------------------------------------------------------------------- the image


def _build_busybox_tar(workdir: Path) -> Path:
    """Build a root folder with the static busybox and its applet links; return its tar."""
    root = workdir / "root"
    (root / "bin").mkdir(parents=True)
    for sub in ("dev", "proc", "sys", "etc", "root", "var"):
        (root / sub).mkdir()
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX_PATH, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX_PATH), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    tar_path = workdir / "busybox-root.tar"
    with tarfile.open(tar_path, "w") as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name)
    return tar_path


def ensure_busybox_image(
    client_or_folder: DockerClient | PodmanService | Path, name: str = DEFAULT_IMAGE
) -> bool:
    """Make sure the lab's busybox image exists, importing it from the host's busybox if not.

    No registry can be reached here, so the image is built from a tarball: a root folder
    with the static ``/bin/busybox`` and links to its applets (``podman import``).

    Args:
        client_or_folder: a docker SDK client connected to the service (imports through the
            Docker API), or a :class:`PodmanService` / its base folder (imports with the
            podman command against that folder's storage).
        name: the image reference, ``repository:tag``.

    Returns:
        True when the image was imported, False when it already existed.

    Raises:
        PodmanError: busybox is missing or the import failed.
    """
    repository, _, tag = name.rpartition(":")
    if not repository or "/" in tag:
        repository, tag = name, "latest"
    if isinstance(client_or_folder, (PodmanService, Path)):
        service = (
            client_or_folder
            if isinstance(client_or_folder, PodmanService)
            else PodmanService(client_or_folder)
        )
        if not service.storage_conf.exists():
            service.write_config()
        exists = subprocess.run(
            [service.podman_bin, "image", "exists", name], env=service.env, check=False
        )
        if exists.returncode == 0:
            return False
    else:
        if client_or_folder.api.images(name=name):
            return False
    if not _is_static_elf(BUSYBOX_PATH):
        raise PodmanError(f"{BUSYBOX_PATH} is missing or not static: install busybox-static")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dr-busybox-") as tmp:
        tar_path = _build_busybox_tar(Path(tmp))
        if isinstance(client_or_folder, (PodmanService, Path)):
            service.podman("import", str(tar_path), f"{repository}:{tag}")
        else:
            client_or_folder.api.import_image(src=str(tar_path), repository=repository, tag=tag)
    log.info("imported image %s in %.2f s", name, time.monotonic() - started)
    return True


# --------------------------------------------------------------------------- host Python


class BindMount(NamedTuple):
    """A host folder bind-mounted into a container."""

    source: str | Path
    target: str | Path
    read_only: bool = True


def host_python() -> str:
    """The path of the Python running this process (a venv's ``bin/python`` if in one)."""
    return sys.executable


def default_python_paths() -> list[Path]:
    """Folders a container needs, beyond ``/usr`` and ``/lib``, to run :func:`host_python`.

    The virtual environment (``sys.prefix``) and the interpreter it was made from
    (``sys.base_prefix``, e.g. a pyenv version), skipping any inside the system folders.
    """
    paths: list[Path] = []
    for prefix in (sys.prefix, sys.base_prefix):
        path = Path(prefix).resolve()
        if _covered(path, [Path(p) for p in SYSTEM_PYTHON_MOUNTS]) or path in paths:
            continue
        paths.append(path)
    return paths


def _covered(path: Path, by: Sequence[Path]) -> bool:
    return any(path == parent or parent in path.parents for parent in by)


def python_container_mounts(
    python_paths: Sequence[str | Path] | None = None, mounts_extra: Sequence[BindMount] = ()
) -> dict[str, dict[str, str]]:
    """The docker SDK ``volumes=`` mapping for a container that runs the host's Python.

    Args:
        python_paths: folders holding the interpreter and its packages (read-only);
            defaults to :func:`default_python_paths`.
        mounts_extra: further bind mounts (e.g. a data folder, read-write).

    Returns:
        ``{host_path: {"bind": container_path, "mode": "ro"|"rw"}}``.
    """
    volumes: dict[str, dict[str, str]] = {}
    for system in SYSTEM_PYTHON_MOUNTS:
        if Path(system).exists():
            volumes[system] = {"bind": system, "mode": "ro"}
    paths = default_python_paths() if python_paths is None else [Path(p) for p in python_paths]
    for path in paths:
        volumes.setdefault(str(path), {"bind": str(path), "mode": "ro"})
    for mount in mounts_extra:
        volumes[str(Path(mount.source).absolute())] = {
            "bind": str(mount.target),
            "mode": "ro" if mount.read_only else "rw",
        }
    return volumes


def run_python_container(
    client: DockerClient,
    name: str,
    argv: Sequence[str],
    *,
    mounts_extra: Sequence[BindMount] = (),
    env: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    image: str = DEFAULT_IMAGE,
    python_paths: Sequence[str | Path] | None = None,
    working_dir: str | None = None,
    **run_kwargs: Any,
) -> Container:
    """Start a detached container that runs the host's Python (e.g. the heartbeat writer).

    The image only provides busybox; ``/usr``, ``/lib``, ``/lib64`` and the Python folders
    are bind-mounted read-only from the host, and the container shares the host's network
    so it reaches servers on 127.0.0.1. ``init=True`` makes ``stop`` take ~0.1 s instead of
    the whole timeout (a Python PID 1 ignores SIGTERM).

    Args:
        client: a docker SDK client (from ``tasks.containers.make_client``).
        name: container name.
        argv: the command, starting with a Python path (e.g. :func:`host_python`).
        mounts_extra: further bind mounts (read-only unless ``read_only=False``).
        env: environment variables (values are never logged).
        labels: container labels.
        image: a local image (see :func:`ensure_busybox_image`).
        python_paths: Python folders to mount; defaults to :func:`default_python_paths`.
        working_dir: working directory inside the container.
        run_kwargs: further ``containers.run`` arguments (e.g. ``restart_policy``).

    Returns:
        The started docker SDK ``Container``.
    """
    volumes = python_container_mounts(python_paths, mounts_extra)
    container = client.containers.run(
        image,
        command=list(argv),
        name=name,
        detach=True,
        init=True,
        network_mode="host",
        volumes=volumes,
        environment=dict(env or {}),
        labels=dict(labels or {}),
        working_dir=working_dir,
        **run_kwargs,
    )
    log.info(
        "started python container %s (%s; env names %s)",
        name,
        " ".join(argv[:3]),
        sorted(env or {}),
    )
    return container
