"""Evidence items are written and verified at once, with the same outcome as one by one."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dr.errors import ChecksumMismatch
from tasks.evidence.bundle import EvidenceBundle, collector_identity, write_bundle
from tasks.evidence.manifest import MANIFEST_NAME, PARALLEL_ITEMS
from tasks.evidence.verify import verify_bundle
from tasks.storage.file import FileRepository


class SlowRepository(FileRepository):
    """Each put takes a while; records how many ran at the same time."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def put_file(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.05)
            return super().put_file(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def bundle_of(tmp_path: Path, n: int) -> tuple[EvidenceBundle, Any]:
    bundle = EvidenceBundle("20250101T000000Z-par", tmp_path / "staging")
    for i in range(n):
        bundle.add_bytes(f"logs/{i:02d}.txt", f"line {i}\n".encode() * 100, kind="log", source="t")
    return bundle, bundle.manifest(title="t", incident={}, collected_by=collector_identity("r"))


def test_items_are_written_at_once_then_the_manifest_and_all_verify(tmp_path: Path) -> None:
    bundle, manifest = bundle_of(tmp_path, 8)
    repo = SlowRepository(tmp_path / "repo")
    stored = write_bundle(repo, "b", bundle, manifest)
    assert stored.items == 8
    assert 1 < repo.most <= PARALLEL_ITEMS
    report = verify_bundle(repo, "b", expected_manifest_sha256=stored.manifest_sha256)
    assert [i.path for i in report.items] == [i.path for i in manifest.items]
    assert all(i.status == "ok" for i in report.items)


def test_a_changed_item_refuses_the_bundle_and_no_manifest_is_written(tmp_path: Path) -> None:
    bundle, manifest = bundle_of(tmp_path, 6)
    repo = SlowRepository(tmp_path / "repo")
    (bundle.staging_dir / "logs" / "03.txt").write_bytes(b"tampered after collection\n")
    with pytest.raises(ChecksumMismatch, match=r"03\.txt"):
        write_bundle(repo, "b", bundle, manifest)
    assert not (tmp_path / "repo" / "b" / MANIFEST_NAME).exists()
