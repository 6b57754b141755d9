"""Compatibility facade (removed when the layout lands): the old ``tasks.evidence`` names.

New code imports :mod:`tasks.evidence.manifest` (models), :mod:`tasks.evidence.bundle`
(collecting and writing) and :mod:`tasks.evidence.verify`.
"""

from tasks.evidence.bundle import (  # noqa: F401
    EvidenceBundle,
    collector_identity,
    write_bundle,
    write_bundle_task,
)
from tasks.evidence.manifest import (  # noqa: F401
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    EvidenceItem,
    EvidenceManifest,
    MissingEvidence,
    StoredBundle,
    VerifiedItem,
    VerifyReport,
)
from tasks.evidence.verify import verify_bundle, verify_bundle_task  # noqa: F401
