"""The production report end to end, in a copy of the session's tiny run (`tiny_workspace`, its embedded MLflow store).

The README's walk-through, with `devchange report` / `make report` at each point a person would look:
1. after `dvc repro` (the tiny run) and before `make promote`: a registry with no champion;
2. after `make promote`, `score-month` and `evaluate-month` of September: one month;
3. after `score-month` of October (targets not in yet) and a November whose features are refused:
   the clear lines (no targets yet, refused), and every figure on the page equal to the monitoring
   file it came from. (The tiny run's stream holds the months after November too, unscored.)
The final page is also rendered by headless Chromium, and the screenshot must not be blank."""
import math
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from bs4 import BeautifulSoup
from mlflow import MlflowClient

from helpers import ROOT, monitoring_doc, run

STREAM = ("2020-09-30", "2020-10-31")
REFUSED = "2020-11-30"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _page(root) -> str:
    return (root / "reports" / "production.html").read_text()


@pytest.fixture(scope="module")
def walk(tiny_workspace, tmp_path_factory):
    root = tiny_workspace  # the session's tiny run, copied: v1 is the registry's challenger, no champion yet
    os.symlink(ROOT / ".venv", root / ".venv")  # `make report` runs in the project's environment
    sh = lambda *cmd, check=True: run(list(cmd), root, check=check)
    out = {"root": root, "sh": sh}
    out["no_champion"] = (sh("devchange", "report"), _page(root))
    sh("make", "promote")
    sh("devchange", "score-month", "--features", f"data/stream/{STREAM[0]}/features.feather")
    sh("devchange", "evaluate-month", "--targets", f"data/stream/{STREAM[0]}/targets.feather")
    out["one_month"] = (sh("make", "report"), _page(root))
    sh("devchange", "score-month", "--features", f"data/stream/{STREAM[1]}/features.feather")
    # November's features arrive (data/stream/2020-11-30, generated) and so does a broken export of them
    refused = tmp_path_factory.mktemp("incoming") / REFUSED
    refused.mkdir()
    features = pd.read_feather(root / f"data/stream/{REFUSED}/features.feather")
    features.drop(columns=["feature_3"]).to_feather(refused / "features.feather")
    out["refused"] = sh("devchange", "score-month", "--features", str(refused / "features.feather"), check=False)
    out["final"] = (sh("make", "report"), _page(root))
    return out


def _text(page: str) -> str:
    return " ".join(BeautifulSoup(page, "html.parser").get_text(" ").split())


def _months_table(page: str) -> list[dict]:
    "The report's table of months, as shown."
    for table in BeautifulSoup(page, "html.parser").find_all("table"):
        head = [th.get_text(strip=True) for th in table.find("thead").find_all("th")]
        if "lift@k" in head and "score PSI" in head:
            return [dict(zip(head, (td.get_text(strip=True) for td in tr.find_all("td"))))
                    for tr in table.find("tbody").find_all("tr")]
    raise AssertionError("no table of months in the report")


def _shown(x, spec=".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def test_a_registry_without_champion_is_a_clear_line(walk):
    p, page = walk["no_champion"]
    text = _text(page)
    assert "Champion: none in devchange" in text
    assert "Registry: model devchange has no champion, so no month can be scored; make promote would judge challenger v1" in text
    assert "No production month yet." in text
    assert "Promote a champion: make promote judges challenger v1" in text and "make emulate plays the whole loop" in text
    # the tiny run's stream months, none scored: one line, not one per month
    assert "2020-09-30 – 2020-12-31: features arrived in the stream (4 month(s))" in text and text.count("refused") == 1
    assert "No promotion decision in data/production/promotions.json yet." in text
    assert "Traceback" not in page and "Error" not in text


def test_one_month(walk):
    p, page = walk["one_month"]
    doc = monitoring_doc(walk["root"], STREAM[0])
    text = _text(page)
    assert f"Newest month {STREAM[0]}: {doc['verdict']['status']} ({doc['verdict']['scope']})" in text
    assert [r["month"] for r in _months_table(page)] == [STREAM[0]]
    assert "wrote reports/production.html and reports/production.ipynb" in p.stdout


def test_every_figure_shown_equals_the_monitoring_file(walk):
    root, page = walk["root"], walk["final"][1]
    rows = _months_table(page)
    assert [r["month"] for r in rows] == list(STREAM)
    for row in rows:
        doc = monitoring_doc(root, row["month"])
        p = doc["performance"] or {}
        expected = {"model": f"champion v{doc['model']['version']}", "users": str(doc["drift"]["n"]),
                    "k": str(doc["scores"]["k"]), "verdict": doc["verdict"]["status"],
                    "lift@k": _shown(p.get("lift_at_k")), "oracle lift@k": _shown(p.get("oracle_lift_at_k")),
                    "CV band": f"{p['band_low']:.3f} – {p['band_high']:.3f}" if p else "–",
                    "precision@k": _shown(p.get("precision_at_k")), "recall@k": _shown(p.get("recall_at_k")),
                    "base rate": _shown(p.get("base_rate"), ".4f"),
                    "largest feature PSI": _shown(doc["drift"]["max_feature_psi"]),
                    "score PSI": _shown(doc["drift"]["score_psi"])}
        assert {k: row[k] for k in expected} == expected, row["month"]
    # the first screen: the champion, the newest month's verdict with each of its reasons, what happens next
    text = _text(page)
    newest, evaluated = monitoring_doc(root, STREAM[1]), monitoring_doc(root, STREAM[0])
    tags = MlflowClient(f"sqlite:///{root}/mlflow.db").get_model_version("devchange", "1").tags
    window = tags["devchange.train_months"].split(",")
    assert text.index(f"Champion: v1 , trained on {window[0]} – {window[-1]}") < text.index("Lift@k per month against")
    assert f"has scored 2 month(s) since {STREAM[0]}" in text
    assert (f"Newest month {STREAM[1]}: {newest['verdict']['status']} (drift only: targets not in yet), scored by v1: "
            f"largest feature PSI {newest['drift']['max_feature_psi']:.3f}, score PSI {newest['drift']['score_psi']:.3f}") in text
    for reason in newest["verdict"]["reasons"]: assert " ".join(reason.split()) in text
    assert text.index("What happens next") < text.index("Lift@k per month against")
    assert f"Waiting for the targets of {STREAM[1]}" in text
    if evaluated["verdict"]["status"] != "retrain" and newest["verdict"]["status"] == "retrain":
        assert f"Retrain: {STREAM[1]} says retrain" in text
    # the champion's promotion, as the version records it (no promotions.json on main yet)
    assert " ".join(tags["promotion.reason"].split()) in text
    assert "report.collect(" not in page  # rendered without code


def test_a_month_without_targets_and_a_refused_month_are_clear_lines(walk):
    refused, text = walk["refused"], _text(walk["final"][1])
    assert refused.returncode == 1 and "missing feature column(s) feature_3" in refused.stderr
    assert not (walk["root"] / "data" / "production" / REFUSED).exists()
    assert (f"{STREAM[1]}: targets not in yet; verdict {monitoring_doc(walk['root'], STREAM[1])['verdict']['status']} "
            "on drift only") in text
    # November's file was refused, December's never tried: production wrote nothing for either, so one line says both
    assert (f"{REFUSED} – 2020-12-31: features arrived in the stream (2 month(s)) and production has no directory for "
            "them: not scored yet, or refused for bad input") in text
    assert "Traceback" not in walk["final"][1]


def test_the_report_and_each_months_metrics_are_in_mlflow(walk):
    client = MlflowClient(f"sqlite:///{walk['root']}/mlflow.db")
    exp = client.get_experiment_by_name("devchange-production").experiment_id
    reports = client.search_runs([exp], "tags.`devchange.kind` = 'production-report'")
    assert {r.data.tags["devchange.month"] for r in reports} == {"none", *STREAM}
    final = next(r for r in reports if r.data.tags["devchange.month"] == STREAM[1])
    assert {a.path for a in client.list_artifacts(final.info.run_id, "reports")} == {
        "reports/production.html", "reports/production.ipynb"}
    evaluate = client.search_runs([exp], "tags.`devchange.kind` = 'production-evaluate'")
    assert len(evaluate) == 1
    history = client.get_metric_history(evaluate[0].info.run_id, "lift_at_k")
    assert [(h.step, h.value) for h in history] == [(248, monitoring_doc(walk["root"], STREAM[0])["performance"]["lift_at_k"])]
    scored = client.search_runs([exp], f"tags.`devchange.kind` = 'production-score' and tags.`devchange.month` = '{STREAM[1]}'")
    assert scored[0].data.metrics["month_index"] == 249


def _browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    assert found, f"no headless browser ({', '.join(BROWSERS)}): install Debian's chromium (apt-get install chromium)"
    return found


def test_the_page_renders_in_headless_chromium(walk, tmp_path):
    shot = tmp_path / "production.png"
    p = subprocess.run([_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1280,1000", "--virtual-time-budget=5000", f"--screenshot={shot}",
                        (walk["root"] / "reports" / "production.html").as_uri()],
                       capture_output=True, text=True, timeout=600)  # minutes on a loaded runner
    assert shot.is_file(), p.stderr[-2000:]
    import matplotlib.image as mpimg
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (1000, 1280)
    ink = (pixels.min(axis=2) < 0.85).mean()  # share of pixels that are not (near) white
    assert ink > 0.02, f"the screenshot is nearly blank: {ink:.2%} of its pixels are not white"
    assert np.unique(pixels.reshape(-1, 3), axis=0).shape[0] > 50  # text and a figure, not one flat colour
