"""What every part of the campaign file is built from: strict frozen models, names that become store
paths, `later` fields outside the fingerprint, the one-line SpecError, and the environment-variable
and path checks shared by scripts and pods."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


SPEC_VERSION = 1
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def _check_name(v: str) -> str:
    if not _NAME_RE.match(v):
        raise ValueError(f"{v!r} is not a name: use lowercase letters, digits, '_', '-', '.' (at most 64)")
    return v


# Names become store directories and file names, so they are kept to a safe alphabet.
Name = Annotated[str, AfterValidator(_check_name)]


class SpecError(ValueError):
    """Bad campaign spec. `str(err)` is one line naming the file and the field."""


def later(default: Any, **kw: Any) -> Any:
    """A field added after campaigns were already fingerprinted: left out of the fingerprint while
    it holds its default (today's behaviour), so existing campaigns keep their identity."""
    return Field(default, json_schema_extra={"omit_at_default": True}, **kw)


def later_defaults(m: BaseModel) -> dict[Any, Any]:
    """model_dump's `exclude` for every `later` field still at its default, nested."""
    out: dict[Any, Any] = {}
    for name, info in type(m).model_fields.items():
        v = getattr(m, name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("omit_at_default") and v == info.get_default(call_default_factory=True):
            out[name] = True
        elif isinstance(v, BaseModel) and (sub := later_defaults(v)):
            out[name] = sub
        elif isinstance(v, list) and (subs := {i: x for i, e in enumerate(v) if isinstance(e, BaseModel) and (x := later_defaults(e))}):
            out[name] = subs
    return out


Beta = Annotated[float, Field(ge=0, lt=1)]
ADAM_BETAS = (0.9, 0.999)  # torch's AdamW defaults


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_adapter(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v):
        raise ValueError(f"{v!r} is not 'package.module:function'")
    return v


Adapter = Annotated[str | None, AfterValidator(_check_adapter)]


# Names of node environment variables that are never handed to a script unless `pass_env` names
# them, and may not be written into a spec (the spec is stored): credentials.
SECRET_ENV_RE = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|CREDENTIAL|^AWS_|^RUNPOD_|^RAY_AUTH", re.IGNORECASE)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# A RunPod secret reference (`{{ RUNPOD_SECRET_name }}`): RunPod puts the secret in at start; the
# pod's env holds only the reference.
_RUNPOD_SECRET_REF_RE = re.compile(r"\{\{\s*RUNPOD_SECRET_\w+\s*\}\}")


def check_env(env: dict[str, str], stored: str, refs_ok: bool = False) -> dict[str, str]:
    """Names only, and no credential by name (`stored` says where the value would be kept and what to
    do instead); `refs_ok`: a value that is a RunPod secret reference is not the secret."""
    for k, value in env.items():
        if not ENV_NAME_RE.fullmatch(k):
            raise ValueError(f"{k!r} is not an environment variable name")
        if SECRET_ENV_RE.search(k) and not (refs_ok and _RUNPOD_SECRET_REF_RE.fullmatch(value.strip())):
            raise ValueError(f"{k}: looks like a credential, and {stored}")
    return env


def relative_path(v: str, field: str) -> str:
    parts = Path(v).parts
    if not parts or Path(v).is_absolute() or ".." in parts:
        raise ValueError(f"{field}: {v!r} must be a path inside the script's run directory (relative, no '..')")
    return v
