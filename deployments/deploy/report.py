"""What ``dr deploy`` did: one outcome per variable, pool and deployment."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Outcome(BaseModel):
    """What :func:`deploy` did to one object."""

    kind: Literal["variable", "work-pool", "deployment"]
    name: str
    outcome: Literal["created", "updated", "unchanged", "skipped"]
    detail: str = ""


class DeployReport(BaseModel):
    """What ``dr deploy`` prints (``--json``)."""

    api_url: str
    pool: str
    pool_type: str
    prefect_file: str
    config_path: str
    outcomes: list[Outcome] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    def deployments(self, outcome: str | None = None) -> list[str]:
        return [
            o.name
            for o in self.outcomes
            if o.kind == "deployment" and (outcome is None or o.outcome == outcome)
        ]
