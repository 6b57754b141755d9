"""Evidence bundles in a file:// repository: written once, verified, tampering caught.

``dr evidence verify`` is the documented command: it must say VERIFIED for an untouched
bundle and refuse one whose file was altered or removed, or whose manifest was replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli.evidence import register
from dr.errors import ChecksumMismatch, ConfigError
from tasks.evidence.bundle import EvidenceBundle, collector_identity, write_bundle
from tasks.evidence.manifest import EvidenceManifest
from tasks.evidence.verify import verify_bundle
from tasks.storage.client import open_repository

pytestmark = [pytest.mark.integration]


def _bundle(tmp_path: Path) -> tuple[EvidenceBundle, EvidenceManifest, Path]:
    bundle = EvidenceBundle("20250101T000000Z-test", tmp_path / "staging")
    src = tmp_path / "server.log"
    src.write_bytes(b"2025-01-01 LOG: connection authorized: user=intruder\n" * 100)
    bundle.add_file("postgres/primary/log/server.log", src, kind="server-log", source="pg primary")
    bundle.add_json("postgres/primary/sessions.json", [{"pid": 1, "user": "intruder"}],
                    kind="sessions", source="pg primary")  # fmt: skip
    bundle.add_bytes("containers/app/logs.txt", b"hello\n", kind="container-log", source="app")
    bundle.missing("k8s events", kind="kubernetes-events", source="ns", reason="API unreachable")
    manifest = bundle.manifest(
        title="test", incident={"target": "t"}, collected_by=collector_identity("run-1")
    )
    return bundle, manifest, src


def _invoke(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["evidence", "verify", *args], catch_exceptions=False)
    return result.exit_code, result.stdout


def test_bundle_written_once_verified_and_tampering_caught(tmp_path: Path) -> None:
    bundle, manifest, src = _bundle(tmp_path)
    assert not manifest.complete and manifest.missing[0].reason == "API unreachable"
    item = next(i for i in manifest.items if i.kind == "server-log")
    assert item.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert manifest.collected_by["flow_run_id"] == "run-1" and manifest.collected_by["hostname"]
    repo = open_repository(f"file://{tmp_path / 'repo'}")
    stored = write_bundle(repo, "t/breach/b1", bundle, manifest, retain_days=1)
    assert stored.items == 3 and not stored.complete and not stored.locked
    assert stored.lock_mode is None
    root = tmp_path / "repo" / "t" / "breach" / "b1"
    written = root / "postgres" / "primary" / "log" / "server.log"
    assert not written.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    # Writing the same bundle again is a no-op; evidence is never overwritten.
    assert write_bundle(repo, "t/breach/b1", bundle, manifest).manifest_sha256 != ""
    report = verify_bundle(repo, "t/breach/b1", expected_manifest_sha256=stored.manifest_sha256)
    assert report.ok and report.complete is False and len(report.items) == 3
    code, out = _invoke(f"file://{root}", "--manifest-sha256", stored.manifest_sha256, "--json")
    assert code == 0 and json.loads(out)["ok"]
    code, out = _invoke(f"file://{root}/manifest.json")
    assert code == 0 and "VERIFIED" in out and "Not collected: k8s events" in out
    # Tamper with a file: caught.
    os.chmod(written, 0o644)
    written.write_bytes(written.read_bytes().replace(b"intruder", b"somebody"))
    code, out = _invoke(f"file://{root}", "--json")
    report_json = json.loads(out)
    assert code == 1 and not report_json["ok"]
    bad = [i for i in report_json["items"] if i["status"] != "ok"]
    assert [i["path"] for i in bad] == ["postgres/primary/log/server.log"]
    assert bad[0]["status"] == "mismatch"
    # Remove one: caught; an extra object is reported.
    (root / "containers" / "app" / "logs.txt").unlink()
    (root / "extra.txt").write_text("planted")
    report = verify_bundle(open_repository(f"file://{root}"))
    statuses = {i.path: i.status for i in report.items}
    assert statuses["containers/app/logs.txt"] == "missing" and report.unlisted == ["extra.txt"]


def test_replaced_manifest_is_caught_by_its_recorded_hash(tmp_path: Path) -> None:
    bundle, manifest, _ = _bundle(tmp_path)
    repo = open_repository(f"file://{tmp_path / 'repo'}")
    stored = write_bundle(repo, "b", bundle, manifest)
    root = tmp_path / "repo" / "b"
    forged = json.loads((root / "manifest.json").read_text())
    forged["items"] = [i for i in forged["items"] if i["kind"] != "sessions"]
    os.chmod(root / "manifest.json", 0o644)
    (root / "manifest.json").write_text(json.dumps(forged))
    assert verify_bundle(open_repository(f"file://{root}")).ok  # self-consistent...
    code, out = _invoke(f"file://{root}", "--manifest-sha256", stored.manifest_sha256, "--json")
    assert code == 1  # ...but not the manifest the run recorded
    assert "is not the recorded" in " ".join(json.loads(out)["problems"])


def test_bundle_without_manifest_and_bad_paths(tmp_path: Path) -> None:
    code, out = _invoke(f"file://{tmp_path}", "--json")
    assert code == 1 and "no manifest.json" in json.loads(out)["problems"][0]
    code, _ = _invoke("ftp://example.invalid/x")
    assert code == 2
    bundle = EvidenceBundle("x", tmp_path / "s")
    for bad in ("../escape", "/abs", "manifest.json"):
        with pytest.raises(ConfigError):
            bundle.add_bytes(bad, b"x", kind="k", source="s")
    first = bundle.add_bytes("a.txt", b"x", kind="k", source="s")
    assert bundle.add_bytes("a.txt", b"x", kind="k", source="s") is first  # a retried step
    with pytest.raises(ConfigError, match="other content"):
        bundle.add_bytes("a.txt", b"y", kind="k", source="s")
    assert (bundle.staging_dir / "a.txt").read_bytes() == b"x"
    assert sorted(p.name for p in bundle.staging_dir.iterdir()) == ["a.txt"]


def test_other_content_under_an_existing_evidence_name_is_refused(tmp_path: Path) -> None:
    bundle, manifest, _ = _bundle(tmp_path)
    repo = open_repository(f"file://{tmp_path / 'repo'}")
    write_bundle(repo, "b", bundle, manifest)
    (bundle.staging_dir / "containers" / "app" / "logs.txt").write_bytes(b"changed\n")
    with pytest.raises(ChecksumMismatch):
        write_bundle(repo, "b", bundle, manifest)
