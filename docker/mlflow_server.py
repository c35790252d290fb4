"""The team stack's MLflow (docker-compose.yml, service `mlflow`), run by the image's Python.

An MLflow tracking server and registry on PostgreSQL (runs, registry, and its users in a second
database), artifacts served by the server itself from the mlflow-artifacts volume (clients never
need the volume), and MLflow's basic-auth app: every request but /health needs a user.
  - the admin (MLFLOW_ADMIN_USERNAME, default admin) gets MLFLOW_ADMIN_PASSWORD when the users'
    database is created; later starts check that the password still matches and stop if not;
  - the service account (MLFLOW_SERVICE_USERNAME / _PASSWORD), which the pipeline, JupyterLab and
    Airflow's workers use, is created or given the password of config/.env at every start;
  - new users read everything and manage what they create (default_permission = READ).
Once the service account works, /tmp/mlflow-ready exists (the compose healthcheck looks for it).
"""
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from urllib.parse import quote

PORT = 5000
READY = "/tmp/mlflow-ready"
ARTIFACTS = "/home/devchange/mlflow/artifacts"


def need(name: str) -> str:
    value = os.environ.get(name, "")
    if not value: sys.exit(f"mlflow: set {name} in config/.env")
    return value


def call(method: str, path: str, user: str, password: str, body: dict | None = None) -> tuple[int, dict]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"message": text}


def main() -> int:
    db_password = need("MLFLOW_DB_PASSWORD")
    admin, admin_password = os.environ.get("MLFLOW_ADMIN_USERNAME") or "admin", need("MLFLOW_ADMIN_PASSWORD")
    service, service_password = os.environ.get("MLFLOW_SERVICE_USERNAME") or "devchange", need("MLFLOW_SERVICE_PASSWORD")
    need("MLFLOW_FLASK_SERVER_SECRET_KEY")  # signs the auth app's forms (CSRF); read by MLflow itself
    if service == admin: sys.exit("mlflow: MLFLOW_SERVICE_USERNAME must differ from the admin's name")
    host = os.environ.get("POSTGRES_ADDRESS") or "postgres:5432"
    db = f"postgresql+psycopg2://mlflow:{quote(db_password, safe='')}@{host}"
    auth_dir = tempfile.mkdtemp(prefix="mlflow-auth-")
    ini = os.path.join(auth_dir, "basic_auth.ini")
    with open(os.open(ini, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write("[mlflow]\ndefault_permission = READ\n"
                f"database_uri = {db.replace('%', '%%')}/mlflow_auth\n"
                f"admin_username = {admin}\nadmin_password = {admin_password.replace('%', '%%')}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    if os.path.exists(READY): os.remove(READY)
    os.makedirs(ARTIFACTS, exist_ok=True)
    server = subprocess.Popen(
        ["mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", str(PORT), "--workers", "1",
         "--backend-store-uri", f"{db}/mlflow", "--artifacts-destination", ARTIFACTS,
         "--allowed-hosts", os.environ.get("MLFLOW_ALLOWED_HOSTS") or f"mlflow:{PORT},localhost:*,127.0.0.1:*"],
        env={**os.environ, "MLFLOW_AUTH_CONFIG_PATH": ini})
    signal.signal(signal.SIGTERM, lambda *_: server.terminate())
    signal.signal(signal.SIGINT, lambda *_: server.terminate())

    while True:  # up: /health answers (the only route without a user)
        if server.poll() is not None: return server.returncode or 1
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5): break
        except OSError:
            time.sleep(1)
    status, body = call("GET", f"/api/2.0/mlflow/users/get?username={quote(admin)}", admin, admin_password)
    if status != 200:
        server.terminate(); server.wait()
        sys.exit(f"mlflow: the admin '{admin}' cannot log in with MLFLOW_ADMIN_PASSWORD ({status}): the users' database "
                 "keeps the password it was created with; set that one in config/.env, or change it in the UI first")
    status, body = call("POST", "/api/2.0/mlflow/users/create", admin, admin_password,
                        {"username": service, "password": service_password})
    if status != 200 and body.get("error_code") == "RESOURCE_ALREADY_EXISTS":
        status, body = call("PATCH", "/api/2.0/mlflow/users/update-password", admin, admin_password,
                            {"username": service, "password": service_password})
    if status != 200:
        server.terminate(); server.wait()
        sys.exit(f"mlflow: could not set up the service account '{service}': {status} {body}")
    open(READY, "w").close()
    print(f"mlflow: basic-auth on; admin '{admin}', service account '{service}' ready", flush=True)
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
