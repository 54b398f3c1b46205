"""Model registry on disk: `<model_dir>/versions/<version>/{model.ubj,meta.json}` plus `CURRENT` naming the active one.

A version is written into a temporary folder and renamed into place (atomic on one filesystem), so a reader
never sees half a model; `CURRENT` is switched with os.replace. Versions sort by time:
`YYYYmmddTHHMMSSffffffZ-<6 hex>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xgboost as xgb

from ai_core import features as F
from ai_core.errors import ModelInvalid, ModelVersionNotFound
from ai_core.model import PlacementModel

VERSION_RE = re.compile(r"^[0-9]{8}T[0-9]{12}Z-[0-9a-f]{6}$")
MODEL_FILE = "model.ubj"
META_FILE = "meta.json"


def new_version(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Registry:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.versions_dir.is_dir():
            return []
        out = [p.name for p in self.versions_dir.iterdir()
               if VERSION_RE.match(p.name) and (p / MODEL_FILE).is_file() and (p / META_FILE).is_file()]
        return sorted(out)

    def path(self, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise ModelVersionNotFound(f"{version!r} is not a model version name")
        return self.versions_dir / version

    def active(self) -> str | None:
        """The version `CURRENT` names if it is complete, else the newest complete one, else None."""
        try:
            named = (self.root / "CURRENT").read_text().strip()
        except OSError:
            named = ""
        versions = self.versions()
        if named in versions:
            return named
        return versions[-1] if versions else None

    def meta(self, version: str) -> dict[str, Any]:
        try:
            return json.loads((self.path(version) / META_FILE).read_text())
        except FileNotFoundError as exc:
            raise ModelVersionNotFound(f"model version {version} is not in {self.versions_dir}") from exc
        except (OSError, ValueError) as exc:
            raise ModelInvalid(f"model version {version}: unreadable {META_FILE}: {exc}") from exc

    def load(self, version: str | None = None) -> PlacementModel:
        """Load `version` (default: the active one), checking its checksum and feature layout."""
        version = version or self.active()
        if version is None:
            raise ModelVersionNotFound(f"no model in {self.versions_dir}")
        meta = self.meta(version)
        model_path = self.path(version) / MODEL_FILE
        if not model_path.is_file():
            raise ModelVersionNotFound(f"model version {version} has no {MODEL_FILE}")
        digest = meta.get("sha256")
        if digest and _sha256(model_path) != digest:
            raise ModelInvalid(f"model version {version}: {MODEL_FILE} does not match its recorded sha256")
        return PlacementModel.load(model_path, version, meta)

    def save(self, booster: xgb.Booster, meta: dict[str, Any], *, activate: bool = True,
             version: str | None = None) -> str:
        """Write a new version atomically; optionally make it the active one. Returns the version."""
        version = version or new_version()
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.versions_dir))
        try:
            model_path = tmp / MODEL_FILE
            booster.save_model(str(model_path))
            full_meta = {**meta, "version": version, "feature_schema": F.FEATURE_SCHEMA,
                         "features": list(F.FEATURES), "sha256": _sha256(model_path),
                         "created_at": meta.get("created_at") or datetime.now(UTC).isoformat()}
            (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, default=str) + "\n")
            for p in (model_path, tmp / META_FILE):
                with p.open("rb") as fh:
                    os.fsync(fh.fileno())
            os.rename(tmp, self.versions_dir / version)
            _fsync_dir(self.versions_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if activate:
            self.activate(version)
        return version

    def activate(self, version: str) -> None:
        if version not in self.versions():
            raise ModelVersionNotFound(f"model version {version} is not in {self.versions_dir}")
        tmp = self.root / f".CURRENT.{secrets.token_hex(4)}"
        tmp.write_text(version + "\n")
        os.replace(tmp, self.root / "CURRENT")
        _fsync_dir(self.root)
