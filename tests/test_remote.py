"""The pod workflow against a real S3-compatible server (moto's, on 127.0.0.1), driven through
the real `dvc` and `git` commands on a tiny generated cohort.

Scenario (one shared pipeline run): clone A runs `dvc repro`, then `dvc push --run-cache` and
`git push` to a bare repository ("origin"); a fresh clone B pulls every output back, clean; a
fresh clone C reruns the pipeline and recomputes nothing; `python -m ehrseq.ops.pod run
-S ++model.lstm.hidden_dim=160` in B runs only the stages that read it and is killed (SIGKILL)
once the model stage is pushed; the same command in a fresh clone D restores the model from the run-cache and finishes;
A pulls the experiment and compares it with main. Plus the remote check's failures, each in
under 10 s: no remote, missing bucket, closed port, rejected credentials (moto's IAM auth)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import ROOT
from tiny_repo import copy_built, run

from ehrseq.ops.pod import experiment_name
from ehrseq.ops.remote import run_cache_blockers

BUCKET = "ehrseq-test"
KEY, SECRET = "testing-key", "testing-secret-value"
DATA_STAGES = ("synthesize", "corpus", "ingest", "sequences")
# What the pod changes: a param that reaches the LSTM alone (train_survival, its curve point,
# embeddings, clustering, evaluate), so the kill-and-restore scenario trains one small model.
# The docs' `-S model.size=large` runs the same code path with every model large (minutes of
# BEHRT-large on 2 cores); the checks before any work below still use it.
POD_OVERRIDE = "++model.lstm.hidden_dim=160"   # ++: a key params.yaml leaves to the schema


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3(endpoint: str, key: str = KEY, secret: str = SECRET, service: str = "s3"):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=key, aws_secret_access_key=secret)


def pod(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m ehrseq.ops.pod ARGS` in ``cwd``; returns the finished process (not checked)."""
    return subprocess.run([sys.executable, "-m", "ehrseq.ops.pod", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(Path(cwd) / "src"), **(env or {})})


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo)


def write_remote(repo: Path, url: str, endpoint: str,
                 creds: tuple[str, str] | None = (KEY, SECRET), creds_in_git: bool = False) -> Path:
    """A bare-bones DVC project for the remote check: .dvc/config (URL, endpoint) and
    .dvc/config.local (credentials), as `dvc remote add -d` + `dvc remote modify [--local]`
    write them (the scenario below uses those commands)."""
    (repo / ".dvc").mkdir(parents=True, exist_ok=True)
    section = "['remote \"storage\"']\n"
    config = f"[core]\n    remote = storage\n{section}    url = {url}\n"
    config += f"    endpointurl = {endpoint}\n"
    secrets = "" if not creds else (f"    access_key_id = {creds[0]}\n"
                                    f"    secret_access_key = {creds[1]}\n")
    (repo / ".dvc/config").write_text(config + (secrets if creds_in_git else ""))
    if secrets and not creds_in_git:
        (repo / ".dvc/config.local").write_text(section + secrets)
    return repo


def add_remote(repo: Path, url: str, endpoint: str) -> None:
    """The documented set-up: URL and endpoint in .dvc/config, credentials in config.local."""
    run(["dvc", "remote", "add", "-f", "-d", "storage", url], repo)
    run(["dvc", "remote", "modify", "storage", "endpointurl", endpoint], repo)
    run(["dvc", "remote", "modify", "--local", "storage", "access_key_id", KEY], repo)
    run(["dvc", "remote", "modify", "--local", "storage", "secret_access_key", SECRET], repo)


def clone(origin: Path, dst: Path, endpoint: str) -> Path:
    """A fresh machine: git clone, then only the credentials (never in git) added locally."""
    run(["git", "clone", "-q", str(origin), str(dst)], dst.parent)
    git(dst, "config", "user.email", "t@t")
    git(dst, "config", "user.name", "t")
    (dst / ".dvc/config.local").write_text(  # what `dvc remote modify --local` writes
        f"['remote \"storage\"']\n    access_key_id = {KEY}\n    secret_access_key = {SECRET}\n")
    return dst


def stage_lines(out: str) -> dict[str, str]:
    """What `dvc repro`/`exp run` did with each stage: ran, restored, unchanged or pulled."""
    done = {}
    for line in out.splitlines():
        for marker, what in (("Running stage '", "ran"),
                             ("' is cached - skipping run", "restored"),
                             ("' didn't change, skipping", "unchanged"),
                             ("[pod] skip '", "unchanged"),
                             ("Pulling data for", "pulled")):
            if marker in line:
                done.setdefault(line.split("'")[1], what)
    return done


@pytest.fixture(scope="module", autouse=True)
def isolated_aws(tmp_path_factory):
    """No credentials or DVC config from the host: only what each test sets."""
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith("AWS_"):
                mp.delenv(k)
        empty = tmp_path_factory.mktemp("aws")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
        mp.setenv("AWS_CONFIG_FILE", str(empty / "config"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("DVC_NO_ANALYTICS", "1")
        mp.setenv("DVC_GLOBAL_CONFIG_DIR", str(empty / "dvc-global"))  # no remote from ~
        mp.setenv("DVC_SYSTEM_CONFIG_DIR", str(empty / "dvc-system"))
        mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        yield


@pytest.fixture(scope="module")
def endpoint():
    """moto's S3 server in a thread, as dvc-s3's own tests run it, with the bucket created
    (DVC never creates one)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # werkzeug logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3(url).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture(scope="module")
def origin(tmp_path_factory, endpoint, tiny_pipeline):
    """Clone A: the session's tiny pipeline run (tests/conftest.py), then `dvc push
    --run-cache` and `git push` to a bare repository in tmp ("origin")."""
    tmp = tmp_path_factory.mktemp("pod")
    origin = tmp / "origin.git"
    run(["git", "init", "-q", "--bare", str(origin)], tmp)
    a = copy_built(tiny_pipeline, tmp / "A")
    add_remote(a, f"s3://{BUCKET}/dvcstore", endpoint)
    for k, v in (("user.email", "t@t"), ("user.name", "t")):
        git(a, "config", k, v)
    assert "up to date" in run(["dvc", "status"], a)
    run(["dvc", "push", "--run-cache"], a)
    git(a, "add", "-A")
    git(a, "commit", "-qm", "pipeline run, remote")
    git(a, "remote", "add", "origin", str(origin))
    git(a, "push", "-q", "-u", "origin", "HEAD:main")
    git(origin, "symbolic-ref", "HEAD", "refs/heads/main")
    return {"tmp": tmp, "origin": origin, "A": a, "endpoint": endpoint}


@pytest.fixture(scope="module")
def clone_b(origin):
    """Clone B: a fresh machine that pulls everything."""
    b = clone(origin["origin"], origin["tmp"] / "B", origin["endpoint"])
    run(["dvc", "pull"], b)
    return b


# ------------------------------------------------------------------------- the scenario


def test_remote_config_keeps_secrets_out_of_git(origin):
    a = origin["A"]
    assert SECRET not in (a / ".dvc/config").read_text()
    assert SECRET in (a / ".dvc/config.local").read_text()
    assert ".dvc/config.local" not in git(a, "ls-files")
    res = pod(["check-remote"], a)
    assert res.returncode == 0, res.stderr
    assert "credentials accepted (from .dvc/config.local)" in res.stdout
    assert SECRET not in res.stdout + res.stderr and KEY not in res.stdout + res.stderr


def test_fresh_clone_pulls_every_output(origin, clone_b):
    lock = yaml.safe_load((clone_b / "dvc.lock").read_text())["stages"]
    for stage in lock.values():
        for out in stage["outs"]:
            assert (clone_b / out["path"]).exists(), out["path"]
    assert (clone_b / "models/train_survival/model.safetensors").is_file()
    assert "up to date" in run(["dvc", "status"], clone_b)


def test_fresh_clone_reruns_nothing(origin):
    """DVC's own pull-and-skip on a machine that pulled nothing: `dvc repro --pull
    --allow-missing` runs no stage, writes no output and leaves dvc.lock as committed. (A
    git-tracked .gitignore inside data/predictions made DVC see `evaluate`'s directory
    dependency "modified": both exports and evaluate re-ran on absent predictions.)
    `dvc exp run --pull --allow-missing` checks out what it can first, and that checkout
    creates the empty parent folders of the missing prediction outputs (DVC 3.67; a two-stage
    repo shows it), so the directory dependency is "modified" again: there the predictions
    stage stops, naming what is missing, and writes nothing; after `python -m ehrseq.ops.pod
    pull-predictions` (small files) it runs no stage. Re-scoring (a changed `report` param)
    needs the predictions too."""
    c = clone(origin["origin"], origin["tmp"] / "C", origin["endpoint"])
    lock = (c / "dvc.lock").read_text()
    out = run(["dvc", "repro", "--pull", "--allow-missing"], c)
    assert "Running stage" not in out, out
    assert set(stage_lines(out).values()) <= {"unchanged", "restored", "pulled"}, out
    assert (c / "dvc.lock").read_text() == lock
    assert git(c, "status", "--porcelain") == "", git(c, "status", "--porcelain")
    for never in ("data/meds_predictions", "data/predictions", "metrics/evaluate.json"):
        assert not (c / never).exists(), never

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(["dvc", "exp", "run", "--pull", "--allow-missing"], cwd=c, text=True,
                         capture_output=True, timeout=600, env=env)
    assert res.returncode != 0 and "pull-predictions" in res.stderr + res.stdout, \
        (res.stdout + res.stderr)[-3000:]
    assert not (c / "data/meds_predictions").exists()          # nothing written
    run(["git", "checkout", "--", "."], c)
    res = pod(["pull-predictions"], c)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    out = run(["dvc", "exp", "run", "--pull", "--allow-missing"], c)
    assert "Running stage" not in out, out
    assert set(stage_lines(out).values()) <= {"unchanged", "restored", "pulled"}, out
    out = run(["dvc", "exp", "run", "--pull", "--allow-missing", "-S", "report.bootstrap=20",
               "evaluate"], c)
    assert stage_lines(out).get("evaluate") == "ran", out
    assert "Running stage" not in out.replace("Running stage 'evaluate'", ""), out


def kill_after_stage_pushed(cmd: list[str], cwd: Path, stage: str) -> str:
    """Run ``cmd`` (a pod) and SIGKILL its whole process group, like a machine that vanishes,
    at the first step after ``stage`` was pushed; return what it printed until then."""
    proc = subprocess.Popen(cmd, cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    seen, pushed = [], False
    try:
        for line in proc.stdout:
            seen.append(line)
            if pushed and line.startswith("[pod]"):
                break
            pushed = pushed or (line.startswith("[pod] $ dvc push --run-cache")
                                and stage in line.split())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert pushed, "".join(seen)[-4000:]
    return "".join(seen)


@pytest.fixture(scope="module")
def pods(origin, clone_b):
    """`python -m ehrseq.ops.pod run -S <POD_OVERRIDE>` twice: in B, killed once the model stage
    is pushed; then in a fresh clone D (a new pod), to the end."""
    args = [sys.executable, "-m", "ehrseq.ops.pod", "run", "-S", POD_OVERRIDE]
    first = kill_after_stage_pushed(args, clone_b, "train_survival")
    d = clone(origin["origin"], origin["tmp"] / "D", origin["endpoint"])
    res = pod(args[3:], d)
    second = res.stdout + res.stderr
    assert res.returncode == 0, second[-4000:]
    return {"first": first, "second": second, "D": d}


def test_pod_runs_only_the_stages_that_read_the_overrides(pods):
    did = stage_lines(pods["first"])
    assert did["train_survival"] == "ran", did
    assert all(did[s] == "unchanged" for s in (*DATA_STAGES, "outcomes", "baselines")), did
    assert "[pod] 1/8 GPU" in pods["first"]  # no GPU here: a warning, not a failure


def test_new_pod_restores_what_the_lost_pod_finished(origin, pods):
    """The run-cache in the remote: the model trained on the killed pod is not trained again."""
    did = stage_lines(pods["second"])
    assert did["train_survival"] == "restored", did
    order = run(["dvc", "stage", "list", "--name-only"], pods["D"]).split()
    after = order[order.index("train_survival") + 1:]
    assert all(s in after for s, what in did.items() if what == "ran"), did
    assert "metrics/summary.json" in pods["second"]  # `dvc metrics diff HEAD` printed
    name = experiment_name([POD_OVERRIDE])
    assert f"[pod] $ dvc exp push --force --no-cache origin {name}" in pods["second"]
    m = json.loads((pods["D"] / "metrics/train_survival.json").read_text())
    base = json.loads((origin["A"] / "metrics/train_survival.json").read_text())
    assert m["lstm.n_params"] > base["lstm.n_params"], (m, base)


def test_laptop_pulls_and_compares_the_experiment(origin, pods):
    a, name = origin["A"], experiment_name([POD_OVERRIDE])
    run(["dvc", "exp", "pull", "origin", name], a)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], a))
    names = {e.get("name") for row in shown for e in (row.get("experiments") or [])}
    assert name in names, shown
    diff = json.loads(run(["dvc", "metrics", "diff", "HEAD", name, "--json"], a))
    assert set(diff) == {"metrics/summary.json"}, diff     # the headline alone
    d = diff["metrics/summary.json"]
    assert d["lstm.train_s"]["new"] != d["lstm.train_s"]["old"], d   # the LSTM trained again
    base = json.loads((a / "metrics/train_survival.json").read_text())      # the detail
    run(["dvc", "exp", "apply", name], a)  # its models, from the remote
    run(["dvc", "pull"], a)
    assert "up to date" in run(["dvc", "status"], a)
    applied = json.loads((a / "metrics/train_survival.json").read_text())
    assert applied["lstm.train_seconds"] == pytest.approx(d["lstm.train_s"]["new"], abs=1e-6)
    assert applied["lstm.n_params"] > base["lstm.n_params"]    # the experiment's wider LSTM


# ------------------------------------------------------------------------- the remote check


def check(repo: Path, env: dict | None = None) -> tuple[int, str, float]:
    t0 = time.time()
    res = pod(["check-remote"], repo, env)
    return res.returncode, (res.stdout + res.stderr).strip(), time.time() - t0


def test_check_without_remote_says_how_to_add_one(tmp_path):
    (tmp_path / "r/.dvc").mkdir(parents=True)
    rc, out, _ = check(tmp_path / "r")
    assert rc == 1
    assert "no default DVC remote" in out and "dvc remote add -d" in out
    assert "runs locally with `dvc repro`" in out


def test_check_missing_bucket(tmp_path, endpoint):
    repo = write_remote(tmp_path / "r", "s3://no-such-bucket/x", endpoint)
    rc, out, secs = check(repo)
    assert rc == 1 and secs < 10
    assert "DVC never creates a bucket" in out
    assert f"aws s3 mb s3://no-such-bucket --endpoint-url {endpoint}" in out
    assert len(out.splitlines()) == 1 and SECRET not in out


def test_check_unreachable_endpoint(tmp_path):
    repo = write_remote(tmp_path / "r", f"s3://{BUCKET}/x", f"http://127.0.0.1:{free_port()}")
    rc, out, secs = check(repo)
    assert rc == 1 and secs < 10
    assert "cannot reach" in out and "endpointurl" in out and len(out.splitlines()) == 1


def test_check_credentials_from_env(tmp_path, endpoint):
    repo = write_remote(tmp_path / "r", f"s3://{BUCKET}/x", endpoint, creds=None)
    rc, out, _ = check(repo, {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET})
    assert rc == 0, out
    assert "from AWS_ACCESS_KEY_ID" in out and SECRET not in out


def test_check_warns_about_credentials_in_git(tmp_path, endpoint):
    repo = write_remote(tmp_path / "r", f"s3://{BUCKET}/x", endpoint, creds_in_git=True)
    rc, out, _ = check(repo)
    assert rc == 0
    assert "which git tracks: move them to .dvc/config.local" in out and SECRET not in out


@pytest.fixture(scope="module")
def auth_endpoint():
    """A second moto server, in its own process, with IAM authentication switched on after
    two users are made: 'nopolicy' (no rights) and 'admin' (s3:*)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        s3(url).create_bucket(Bucket=BUCKET)
        iam = s3(url, service="iam")
        keys = {}
        for user in ("nopolicy", "admin"):
            iam.create_user(UserName=user)
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
        iam.put_user_policy(UserName="admin", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        urllib.request.urlopen(urllib.request.Request(  # authenticate every request from now on
            f"{url}/moto-api/reset-auth", data=b"0", method="POST",
            headers={"Content-Type": "text/plain"}))
        yield url, {u: (k["AccessKeyId"], k["SecretAccessKey"]) for u, k in keys.items()}
    finally:
        proc.terminate()
        proc.wait()


@pytest.mark.parametrize("who, expect", [
    ("unknown key", "credentials rejected (InvalidAccessKeyId)"),
    ("wrong secret", "credentials rejected (SignatureDoesNotMatch)"),
    ("no rights", "access denied (403 AccessDenied)"),
    ("admin", "credentials accepted"),
])
def test_check_credentials(tmp_path, auth_endpoint, who, expect):
    url, keys = auth_endpoint
    creds = {"unknown key": ("AKIAUNKNOWN000000000", "x" * 40),
             "wrong secret": (keys["admin"][0], "x" * 40),
             "no rights": keys["nopolicy"],
             "admin": keys["admin"]}[who]
    repo = write_remote(tmp_path / "r", f"s3://{BUCKET}/x", url, creds=creds)
    rc, out, secs = check(repo)
    assert rc == (0 if who == "admin" else 1), out
    assert expect in out and secs < 10
    assert creds[1] not in out


@pytest.mark.parametrize("problem, override, expect", [
    ("no git identity", "model.size=large", "git user.name is not set and `dvc exp save` needs"),
    ("git remote gone", "model.size=large", "cannot push to git remote 'origin'"),
    ("bad value", "model.size=huge", "model.size: got 'huge'"),
    ("unknown key", "model.sise=large", "cannot apply ['model.sise=large'] to params.yaml"),
])
def test_pod_stops_before_any_work(tmp_path, endpoint, problem, override, expect):
    """What would fail `dvc exp save`/`exp push` after hours of training, or the first stage
    after a long pull, fails before `dvc pull`."""
    repo = write_remote(tmp_path / "r", f"s3://{BUCKET}/x", endpoint)
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    ident = ["-c", "user.name=t", "-c", "user.email=t@t"]
    git(repo, "init", "-q")
    git(repo, "add", "params.yaml")
    git(repo, *ident, "commit", "-q", "-m", "params")
    origin = tmp_path / "origin.git"
    if problem != "git remote gone":
        run(["git", "init", "-q", "--bare", str(origin)], tmp_path)
    git(repo, "remote", "add", "origin", str(origin))
    env = {}
    if problem == "no git identity":
        env = {"GIT_CONFIG_GLOBAL": str(tmp_path / "none"), "GIT_CONFIG_NOSYSTEM": "1"}
    else:
        git(repo, "config", "user.name", "t")
        git(repo, "config", "user.email", "t@t")
    res = pod(["run", "-S", override], repo, env)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "[pod] FAILED: " in out and expect in out and "5/8" not in out, out


# ------------------------------------------------------------------------- units


def test_experiment_name_is_stable_and_a_valid_ref():
    assert experiment_name([]) == "pod-baseline"
    assert experiment_name(["model.size=large"]) == "pod-model-size-large"
    long = [f"train.lr={i / 1000}" for i in range(30)]
    assert experiment_name(long) == experiment_name(long) != experiment_name(long[:-1])
    assert len(experiment_name(long)) <= 64
    run(["git", "check-ref-format", f"refs/exps/ab/{experiment_name(long)}"], ROOT)


def test_every_stage_restorable_from_run_cache():
    """No output with cache: false or persist: true, no always_changed stage: each would re-run
    on every new pod (the run-cache lesson in GUIDE.md)."""
    assert run_cache_blockers(ROOT) == []


def test_an_uncached_output_blocks_unless_git_tracks_it(tmp_path):
    """cache: false re-runs on every new pod unless the output comes with the clone (stage
    `code`'s listings are tracked by git)."""
    import subprocess

    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {
        "cmd": "cp in.txt out.txt", "deps": ["in.txt"],
        "outs": [{"out.txt": {"cache": False}}]}}}))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    blockers = run_cache_blockers(tmp_path)
    assert len(blockers) == 1 and blockers[0].endswith("s: out.txt has cache: false"), blockers
    (tmp_path / "out.txt").write_text("x\n")
    subprocess.run(["git", "add", "out.txt"], cwd=tmp_path, check=True)
    assert run_cache_blockers(tmp_path) == []
