"""What the tests and the benchmarks share: copies of the project, commands run in them, servers started and
stopped, and the few ways of reading a run's results that several test modules need.

Plain functions, no fixtures (those are in tests/conftest.py, which uses these). pytest.ini puts tests/ on
`pythonpath`; benchmarks/*.py put it on `sys.path` themselves."""
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv that runs the tests also runs the copies

TINY = {  # small enough for seconds per stage, big enough for every fold to hold changers
    "generate.n_users": 1500,
    "models.lightgbm.params.n_estimators": 40,
    "models.lightgbm.params.min_child_samples": 20,
}
# The world every end-to-end test shares (the session's tiny run, `tiny_copy`'s default, the guides): the TINY sizes,
# and a world that decays fast enough for the production loop to turn within the three generated production months
WORLD = {**TINY,
         "generate.stream_months": 3,      # production months 2020-09 ... 2020-12
         "generate.drift": 0.35, "generate.concept_drift": 4.0,
         "promotion.floor": 0.0}  # tiny data's worst CV fold can fall below the default floor: decide on the months
FRESH = ("reports/", "data/raw", "dvc.lock")  # what a copy leaves out to run from clean


# ---------------------------------------------------------------- copies of the project, commands in them

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
    "The caller's environment with the test venv first on PATH and no MLflow or project-root settings."
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e['PATH']}"
    e.pop("DEVCHANGE_ROOT", None)
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    "Run `cmd` in `cwd` with `env()` (plus `extra_env`); with `check`, fail with its output if it fails."
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


def commit(root: Path, message: str, *args: str) -> None:
    "git commit -q `args` (default: -a) in `root` as the test user."
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", message,
         *(args or ("-a",))], root)


def fresh_copy(dest: Path, changes: dict, message: str, skip_prefixes: tuple[str, ...] = FRESH) -> Path:
    """A fresh copy of the project at `dest` (no data, reports or dvc.lock: the pipeline runs from clean) with
    `changes` to params.yaml, committed with `message`."""
    root = copy_project(dest, skip_prefixes=skip_prefixes)
    update_params(root, changes)
    commit(root, message)
    return root


def tiny_copy(dest: Path, changes: dict | None = None, message: str = "tiny params",
              skip_prefixes: tuple[str, ...] = FRESH, world: dict = WORLD) -> Path:
    "`fresh_copy` with the WORLD settings (or `world`, such as TINY alone: the project's own world, small) and `changes` on top."
    return fresh_copy(dest, {**world, **(changes or {})}, message, skip_prefixes)


def _text_columns(con: sqlite3.Connection):
    for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        for _, column, kind, *_ in con.execute(f'PRAGMA table_info("{table}")').fetchall():
            if any(t in kind.upper() for t in ("CHAR", "TEXT", "CLOB")): yield table, column


def _relocate_store(db: Path, old: str, new: str) -> tuple[int, int]:
    """Replace the path `old` by `new` in every text value of the SQLite store `db`: (values changed, values that
    still hold `old` afterwards)."""
    con = sqlite3.connect(db)
    try:
        with con:  # one transaction
            changed = sum(con.execute(f'UPDATE "{t}" SET "{c}" = replace("{c}", ?, ?) WHERE instr("{c}", ?) > 0',
                                      (old, new, old)).rowcount for t, c in list(_text_columns(con)))
        left = sum(con.execute(f'SELECT count(*) FROM "{t}" WHERE instr("{c}", ?) > 0', (old,)).fetchone()[0]
                   for t, c in list(_text_columns(con)))
    finally:
        con.close()
    return changed, left


def copy_run(src: Path, dest: Path) -> Path:
    """A copy at `dest` of the finished run in `src`, as if it had run there: the git repository, DVC's cache and
    outputs, and the embedded MLflow store (mlflow.db, mlartifacts/) with every absolute path in it moved from
    `src` to `dest`. Seconds, where a new `dvc repro` of the tiny pipeline takes minutes."""
    src, dest = Path(src).resolve(), Path(dest).resolve()
    shutil.copytree(src, dest, symlinks=True)
    db = dest / "mlflow.db"
    if db.is_file():
        moved, left = _relocate_store(db, str(src), str(dest))
        assert moved and not left, f"{db}: {moved} paths moved from {src}, {left} left: the copy would use the original's artifacts"
    for f in (dest / "mlartifacts").rglob("*"):  # a logged model's MLmodel names its own location
        if f.is_file() and f.stat().st_size < 1 << 20 and str(src).encode() in (data := f.read_bytes()):
            f.write_bytes(data.replace(str(src).encode(), str(dest).encode()))
    return dest


# ---------------------------------------------------------------- what a run wrote

def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_hashes(root: Path, paths) -> dict[str, str]:
    "sha256 of each file among `paths` (relative to `root`; folders: every file below), by relative path."
    files = {}
    for rel in paths:
        p = root / rel
        for f in sorted(p.rglob("*") if p.is_dir() else [p] if p.exists() else []):
            if f.is_file(): files[str(f.relative_to(root))] = sha256(f)
    return files


def stage_outs(dvc_yaml: Path, kinds=("outs", "metrics", "plots"), cached_only: bool = False,
               stages: list[str] | None = None) -> list[str]:
    """The output paths of the stages of `dvc_yaml` (all, or `stages`), in order; `cached_only`: leave out
    `cache: false` ones."""
    specs = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    return [next(iter(o)) if isinstance(o, dict) else o for name in (stages or specs) for kind in kinds
            for o in specs[name].get(kind, [])
            if not (cached_only and isinstance(o, dict) and next(iter(o.values())).get("cache") is False)]


def stages_run(output: str) -> list[str]:
    "The stages a `dvc repro`'s output says it ran, in order."
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def monitoring_doc(root: Path, month: str, version: int | None = None, production: str = "data/production") -> dict:
    "The monitoring document production wrote for `month`: the champion's, or shadow version `version`'s."
    folder = Path(root) / production / month
    return json.loads(((folder / "shadow" / f"v{version}") if version else folder).joinpath("monitoring.json").read_text())


def child_runs(client, experiment_id: str, run_id: str, kind: str | None = None) -> list:
    "The MLflow runs whose parent is `run_id` (of `kind`, the devchange.kind tag, when given)."
    found = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'")
    return [c for c in found if kind is None or c.data.tags.get("devchange.kind") == kind]


# ---------------------------------------------------------------- servers: ports, processes, logins

def free_port() -> int:
    "A port nobody listens on (free now, closed once the socket is)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    "The live processes of session `sid`: a process started with `start_new_session=True` and all it started."
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getsid(int(p.name)) == sid and (p / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(p.name))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
    return pids


def stop_session(proc: subprocess.Popen, term_wait_s: float = 20) -> None:
    """Stop `proc` (started with `start_new_session=True`) and every process of its session: SIGTERM, and SIGKILL
    to what is left after `term_wait_s`. Returns once none is left (`mlflow server`'s uvicorn workers, Airflow's
    components), so no server outlives its test."""
    for sig, wait in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, 10)):
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while (proc.poll(), session_pids(proc.pid))[1] and time.monotonic() < deadline: time.sleep(0.5)
        if not session_pids(proc.pid): break
    proc.wait(timeout=10)


def airflow_health(api: str) -> dict:
    "Airflow's health document (component -> {status, ...}), or {} while it does not answer."
    try:
        return requests.get(f"{api}/api/v2/monitor/health", timeout=5).json()
    except (requests.RequestException, ValueError):
        return {}


def airflow_healthy(health: dict, components) -> bool:
    return all(health.get(c, {}).get("status") == "healthy" for c in components)


def airflow_session(api: str, password: str, user: str = "admin") -> requests.Session:
    "A requests session logged in to Airflow's REST API (simple auth manager: a bearer token from /auth/token)."
    r = requests.post(f"{api}/auth/token", json={"username": user, "password": password}, timeout=30)
    assert r.status_code in (200, 201), f"Airflow login as {user} failed: {r.status_code} {r.text}"
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
    return s
