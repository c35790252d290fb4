"""CI/CD and delivery files: the workflow is linted and runs only make targets that CI also runs;
the compose file is valid for both compose versions' rules; `make repro-tiny` and `make pr-report`
work on a copy of the project. (The image and the stack themselves: tests/docker/, make test-docker.)"""
import json
import re

import jsonschema
import pytest
import yaml

from helpers import BIN, ROOT, TINY, copy_project, run, update_params

WORKFLOWS = ROOT / ".github" / "workflows"
# each make target the workflow runs, and the file whose run of it keeps the step honest
EXERCISED_BY = {
    "test": ".ci/run",
    "docs": "tests/test_docs.py",
    "repro-tiny": "tests/test_ci.py",
    "pr-report": "tests/test_ci.py",
    "image": "tests/docker/docker_e2e.py",
    "image-run": "tests/docker/docker_e2e.py",
    "promote": "tests/docker/docker_e2e.py",
}


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))


def _workflow_make_targets() -> set[str]:
    found = set()
    for wf in WORKFLOWS.glob("*.y*ml"):
        for job in yaml.safe_load(wf.read_text())["jobs"].values():
            for step in job.get("steps", []):
                found |= set(re.findall(r"\bmake\s+(?:-\S+\s+)*([a-z][a-z-]*)", step.get("run", "")))
    return found


def test_workflows_pass_the_linter_with_shellcheck_on_their_scripts():
    p = run([str(BIN / "jactionlint"), "--no-color"], ROOT, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "shellcheck was not found" not in p.stdout + p.stderr


def test_the_linter_rejects_a_broken_workflow(tmp_path):
    "The lint above can fail: an injectable expression and a shell mistake are reported."
    (tmp_path / ".github/workflows").mkdir(parents=True)
    (tmp_path / ".github/workflows/bad.yml").write_text(
        "name: bad\non: [pull_request]\npermissions: {}\nconcurrency: {group: bad, cancel-in-progress: true}\n"
        "jobs:\n  a:\n    runs-on: ubuntu-latest\n    timeout-minutes: 5\n    steps:\n"
        "      - run: echo ${{ github.event.pull_request.title }}\n      - run: cd $DIR && make test\n")
    p = run([str(BIN / "jactionlint"), "--no-color", ".github/workflows/bad.yml"], tmp_path, check=False)
    assert p.returncode == 1
    assert "template-injection" in p.stdout and "SC2086" in p.stdout, p.stdout


def test_workflow_steps_are_make_targets_that_ci_also_runs():
    used = _workflow_make_targets()
    assert used == set(EXERCISED_BY), f"a workflow step without a test that runs it: {used ^ set(EXERCISED_BY)}"
    assert not used - _makefile_targets(), f"not in the Makefile: {used - _makefile_targets()}"
    for target, path in EXERCISED_BY.items():
        calls = rf'\bmake {target}(?![\w-])|make\(repo, "{target}"|"make",[^\]]*"{target}"'  # shell, or Python argv
        assert re.search(calls, (ROOT / path).read_text()), f"{path} does not run make {target}"


def test_shell_scripts_pass_shellcheck():
    scripts = [".ci/run", ".ci/pr-report", "tools/browser.sh", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docker").glob("*.sh"))]
    p = run([str(BIN / "shellcheck"), *scripts], ROOT, check=False)
    assert p.returncode == 0, p.stdout


def _interpolate(text: str, values: dict) -> str:
    "Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, with `values` as the env file."
    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if values.get(name): return values[name]
        if op == ":?": raise AssertionError(f"{name}: {arg}")
        return arg or ""
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, text)


def _env_example() -> dict:
    lines = (ROOT / "config/.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_compose_file_is_valid_for_compose_v2_and_uses_only_the_project_images():
    "v2 validates against the Compose Specification's schema (tests/data, from compose-spec/compose-spec,"
    " Apache-2.0); make test-docker runs the file with v1."
    text = (ROOT / "docker-compose.yml").read_text()
    example = _env_example()
    used = set(re.findall(r"\$\{(\w+)", text))
    assert used == set(example), f"config/.env.example and docker-compose.yml disagree on: {used ^ set(example)}"
    # no default secret: every password, key and token is empty in the example (compose refuses those)
    secrets = {k for k in example if re.search(r"PASSWORD|KEY|TOKEN", k)}
    assert secrets and not {k for k in secrets if example[k]}, {k: example[k] for k in secrets if example[k]}
    model = yaml.safe_load(_interpolate(text, {k: v or "s3cret" for k, v in example.items()}))
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(model)  # the draft its $schema names
    assert "version" not in model  # obsolete for v2; v1.29 reads the file without it
    for name, service in model["services"].items():
        # the project's image, or PostgreSQL and Redis from Debian's packages on the same base
        if service["image"] == example["DEVCHANGE_SERVICES_IMAGE"]:
            assert service["build"]["dockerfile"] == "services.Dockerfile" and service["build"]["context"] == "docker", name
        else:
            assert service["image"] == example["DEVCHANGE_IMAGE"], name
        assert service["build"]["args"]["BASE_IMAGE"] == example["BASE_IMAGE"], name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond the loopback address"


def test_compose_file_without_settings_names_the_env_file():
    with pytest.raises(AssertionError, match="config/.env"):
        _interpolate((ROOT / "docker-compose.yml").read_text(), {})


def test_tiny_settings_of_the_makefile_are_the_tests():
    line = re.search(r"^TINY_PARAMS := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert {k: int(v) for k, v in (kv.split("=") for kv in line.split())} == TINY


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    "A copy of the project on branch main, running make with the test's environment."
    root = copy_project(tmp_path_factory.mktemp("ci") / "devchange")
    (root / ".venv").symlink_to(BIN.parent)  # make -o .venv/.installed: used as is, never reinstalled into
    return root


def make(root, *args, check=True):
    return run(["make", "-o", ".venv/.installed", *args], root, check=check)


def test_repro_tiny_runs_the_pipeline_and_leaves_the_workspace_as_committed(repo):
    status = run(["git", "status", "--porcelain"], repo).stdout
    params = (repo / "params.yaml").read_text()
    make(repo, "repro-tiny")
    assert run(["git", "status", "--porcelain"], repo).stdout == status
    assert (repo / "params.yaml").read_text() == params
    assert not (repo / "data/raw/target.feather").exists()
    exps = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    ran = [e for rev in exps for e in (rev.get("experiments") or []) for r in e["revs"]
           if r.get("data", {}).get("params", {}).get("params.yaml", {}).get("data", {})
           .get("generate", {}).get("n_users") == TINY["generate.n_users"]]
    assert ran, "no experiment with the tiny settings recorded"


def test_pr_report_tables_the_params_and_metrics_that_changed(repo):
    run(["git", "checkout", "-qb", "feature"], repo)
    update_params(repo, {"models.lightgbm.params.num_leaves": 63})
    cv_path = repo / "reports/metrics/cv.json"
    cv = json.loads(cv_path.read_text())
    cv["candidates"]["lightgbm"]["lift_at_k"]["mean"] += 0.5
    cv_path.write_text(json.dumps(cv, indent=2))
    run(["git", "commit", "-qam", "a wider model"], repo)
    make(repo, "pr-report", "BASE=main", "PR_REPORT=report.md")
    report = (repo / "report.md").read_text()
    assert "against `main`" in report
    assert re.search(r"\| params\.yaml \| models\.lightgbm\.params\.num_leaves \| 31 +\| 63 ", report), report
    assert re.search(r"\| reports/metrics/cv\.json \| candidates\.lightgbm\.lift_at_k\.mean \|.*\| 0\.5 ", report), report
    run(["git", "checkout", "-q", "main"], repo)
    make(repo, "pr-report", "BASE=main", "PR_REPORT=same.md")
    same = (repo / "same.md").read_text()
    assert "No parameter changed." in same and "No metric changed." in same


def test_pr_report_names_a_base_that_is_not_there(repo):
    p = make(repo, "pr-report", "BASE=origin/nosuch", "PR_REPORT=x.md", check=False)
    assert p.returncode != 0
    assert "BASE=origin/nosuch is not a commit" in p.stderr
