"""What every config model shares: the strict base and secret references.

Apart from :mod:`dr.config` so that the models of one kind of state (caches, files, see
:mod:`dr.config_state`) can live in their own module; import both names from ``dr.config``.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dr.errors import ConfigError, register_secret


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=False)


# --------------------------------------------------------------------------- secrets


class SecretRef(Strict):
    """Where a credential lives: exactly one of an environment variable or a Prefect Secret block."""

    env: str | None = Field(None, description="Name of an environment variable.")
    prefect_secret: str | None = Field(None, description="Name of a Prefect Secret block.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        if (self.env is None) == (self.prefect_secret is None):
            raise ValueError("give exactly one of 'env' or 'prefect_secret'")
        return self

    def describe(self) -> str:
        """A safe, human description of the reference (never the value)."""
        return f"env:{self.env}" if self.env else f"prefect-secret:{self.prefect_secret}"

    def resolve(self) -> str:
        """Fetch the secret's value. The value is registered for redaction everywhere."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"environment variable {self.env} is not set", [])
        else:
            from prefect.blocks.system import Secret  # imported lazily: slow import

            try:
                value = Secret.load(self.prefect_secret).get()  # type: ignore[arg-type]
            except ValueError as exc:
                raise ConfigError(
                    f"Prefect Secret block {self.prefect_secret!r} not found", []
                ) from exc
            value = str(value)
        register_secret(value)
        return value
