"""Shared fixtures: the repository, a working copy of it, and commands run in that copy."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv that runs the tests also runs the copies


def project_files() -> list[str]:
    "Tracked files plus new ones not ignored: what a commit of the working tree would hold."
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def copy_project(dest: Path, skip_prefixes: tuple[str, ...] = ()) -> Path:
    "Copy the working tree's project files to `dest` (a new git repository with one commit)."
    for f in project_files():
        if f.startswith(skip_prefixes): continue
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "copy"], dest)
    return dest


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e['PATH']}"
    e.pop("DEVCHANGE_ROOT", None)
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**env(), **(extra_env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}) in {cwd}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}")
    return p


def update_params(root: Path, changes: dict) -> None:
    "Set dotted keys in root/params.yaml."
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = params
        for p in parents: node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


TINY = {  # small enough for seconds per stage, big enough for every fold to hold changers
    "generate.n_users": 1500,
    "models.lightgbm.params.n_estimators": 40,
    "models.lightgbm.params.min_child_samples": 20,
}
