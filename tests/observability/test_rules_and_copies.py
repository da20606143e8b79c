"""promtool on the alerting rules (syntax and unit tests) and the generated deploy/ copies."""

import shutil
import subprocess
from pathlib import Path

from obs_contract import ALERT_NAMES
from obs_harness import ALERTS, REPO, promtool_bin

HERE = Path(__file__).resolve().parent


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO, **kw)


def test_promtool_check_rules():
    proc = run([promtool_bin(), "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in proc.stdout, proc.stdout


def test_promtool_check_rules_on_the_deploy_copy():
    copy = REPO / "deploy" / "prometheus" / "tyk-dispatcher-alerts.yaml"
    proc = run([promtool_bin(), "check", "rules", str(copy)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules():
    proc = run([promtool_bin(), "test", "rules", str(HERE / "alerts_test.yaml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout, proc.stdout


def test_deploy_copies_are_current():
    proc = run(["bash", "scripts/generate-deploy.sh", "--check"])
    assert proc.returncode == 0, f"deploy/ is stale; run scripts/generate-deploy.sh\n{proc.stdout}{proc.stderr}"


def test_generator_writes_then_check_passes_and_detects_staleness(tmp_path):
    # A scratch copy of the repository's relevant paths, so the real deploy/ is never touched.
    for rel in ("scripts/generate-deploy.sh", "helm/tyk-dispatcher/files/dashboard.json",
                "helm/tyk-dispatcher/files/alerts.yaml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, tmp_path / rel)
    script = tmp_path / "scripts" / "generate-deploy.sh"

    def gen(*args):
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60)

    assert gen("--check").returncode != 0, "--check passed with no copies"
    assert gen().returncode == 0
    assert gen("--check").returncode == 0
    dash = tmp_path / "deploy" / "grafana" / "tyk-dispatcher-dashboard.json"
    rules = tmp_path / "deploy" / "prometheus" / "tyk-dispatcher-alerts.yaml"
    assert dash.read_bytes() == (tmp_path / "helm/tyk-dispatcher/files/dashboard.json").read_bytes()
    text = rules.read_text()
    assert text.startswith("# GENERATED") and "helm/tyk-dispatcher/files/alerts.yaml" in text.splitlines()[0]
    assert text.endswith((tmp_path / "helm/tyk-dispatcher/files/alerts.yaml").read_text())
    # An edit of the canonical file makes the copy stale.
    src = tmp_path / "helm/tyk-dispatcher/files/alerts.yaml"
    src.write_text(src.read_text() + "\n# edited\n")
    proc = gen("--check")
    assert proc.returncode == 1 and "tyk-dispatcher-alerts.yaml" in proc.stderr
    assert "# edited" not in rules.read_text(), "--check must not write"
