"""Pod safety of the real training stages (issue 11), through the one recipe, against a real
S3-compatible server (moto on loopback):

- machine A runs `stages/pretrain_behrt.py` (then `stages/train_survival.py`) with checkpoints
  mirrored to the DVC remote; its whole process group is killed with SIGKILL once a mirrored
  checkpoint exists, and A is deleted;
- machine B, a fresh directory with the same inputs and remote and no local checkpoint, runs the
  same stage: it pulls the mirrored checkpoint, resumes, and ends with the same weights and
  metrics as machine C, which ran the stage once without interruption (and without a mirror);
- a remote the mirror cannot use (wrong credentials, missing bucket, unreachable endpoint)
  stops the stage before any training, with a message naming the remote.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from test_mirror import s3  # noqa: F401 - fixture: moto S3 on loopback, bucket "ckpt"
from test_remote import (
    BUCKET,
    auth_endpoint,  # noqa: F401 - fixture: moto with IAM authentication
)
from test_tune import toy_workspace

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("seconds", "_per_s", "peak_memory_mb", "wall_time_s")


@pytest.fixture
def store(s3):  # noqa: F811 - the fixture of that name
    """The moto S3 server of tests/test_mirror.py, and a prefix of its bucket of our own
    (moto keeps its state per process, so every test needs its own place)."""
    endpoint, client = s3
    return endpoint, client, f"s3://ckpt/{uuid.uuid4().hex[:12]}"


def machine(root: Path, endpoint: str | None, mirror: bool = True, url: str = "") -> Path:
    """A workspace with the stage's inputs (toy sequences and outcomes), tiny models, and,
    with ``endpoint``, a DVC project whose default remote is the S3 server."""
    root.mkdir(parents=True)
    toy_workspace(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["behrt"] = {"hidden": 16, "layers": 1, "heads": 2, "intermediate": 32,
                                "max_len": 64}
    params["train"] = {"epochs": 30, "batch_size": 16, "patience": 30, "lr": 0.003}
    params["runtime"] = {"threads": 1, "device": "cpu", "checkpoint_every_steps": 1,
                         "checkpoint_every_minutes": 0, "mirror_checkpoints": mirror}
    params["tune"] = {"lrs": None}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    if endpoint is not None:
        remote(root, url, endpoint)
    return root


def remote(root: Path, url: str, endpoint: str, creds: tuple[str, str] | None = None) -> None:
    """Make ``root`` a DVC project whose default remote is ``url`` at ``endpoint``, the way a
    user does (`dvc remote add -d`, `dvc remote modify [--local]`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmds = [] if (root / ".dvc").is_dir() else [
        ["git", "init", "-q"], ["dvc", "init", "-q"],
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clone"]]
    cmds += [["dvc", "remote", "add", "-f", "-d", "storage", url],
             ["dvc", "remote", "modify", "storage", "endpointurl", endpoint]]
    if creds:
        cmds += [["dvc", "remote", "modify", "--local", "storage", "access_key_id", creds[0]],
                 ["dvc", "remote", "modify", "--local", "storage", "secret_access_key",
                  creds[1]]]
    for cmd in cmds:
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)


def start(stage: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, str(ROOT / f"stages/{stage}.py")], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)   # its own process group


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return err


def manifests(client, url: str) -> list[str]:
    prefix = url.split("/", 3)[3]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="ckpt", Prefix=prefix)
            .get("Contents", [])]
    return [k for k in keys if k.endswith("manifest.json")]


def outputs(root: Path, stage: str) -> tuple[bytes, dict]:
    weights = b"".join(p.read_bytes() for p in sorted((root / "models" / stage).glob(
        "*.safetensors")))
    m = json.loads((root / f"metrics/{stage}.json").read_text())
    return weights, {k: v for k, v in m.items() if not any(t in k for t in TIMING)}


@pytest.mark.parametrize("stage", ["pretrain_behrt",
                                   pytest.param("train_survival", marks=pytest.mark.slow)])
def test_lost_machine_resumes_from_the_mirror_with_the_same_result(stage, store, tmp_path):
    endpoint, client, url = store
    ref = machine(tmp_path / "C", None, mirror=False)
    finish(start(stage, ref))

    a = machine(tmp_path / "A", endpoint, url=url)
    proc = start(stage, a)
    deadline = time.time() + 600
    while not manifests(client, url):
        assert proc.poll() is None, "the run finished before a checkpoint reached the remote"
        assert time.time() < deadline, "no checkpoint reached the remote"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)   # the pod is gone: every process of the stage
    proc.wait()
    assert not (a / "models" / stage).exists()   # nothing half-written
    shutil.rmtree(a)                              # ... and so is its disk
    pushed = manifests(client, url)

    b = machine(tmp_path / "B", endpoint, url=url)
    err = finish(start(stage, b))
    assert "pulled checkpoint" in err and "resuming from" in err, (pushed, manifests(client, url),
                                                                   err[:3000])
    assert outputs(b, stage) == outputs(ref, stage)
    assert pushed and manifests(client, url)   # the lost run's checkpoints served B; B's remain


@pytest.mark.parametrize("problem, expect", [
    ("missing bucket", "no-such-bucket"),
    ("unreachable endpoint", "cannot reach DVC remote 'storage'"),
])
def test_unusable_remote_stops_before_training(problem, expect, store, tmp_path):
    endpoint, _, url = store
    root = machine(tmp_path / "A", endpoint, url=url)
    if problem == "missing bucket":
        remote(root, "s3://no-such-bucket/project", endpoint)
    else:
        remote(root, url, "http://127.0.0.1:9")
    t0 = time.time()
    proc = start("train_survival", root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-2000:]
    assert expect in err and "cannot reach DVC remote 'storage'" in err, err[-2000:]
    assert "epoch 1" not in err and not (root / "checkpoints").exists()
    assert time.time() - t0 < 120


def test_wrong_credentials_stop_before_training(tmp_path, auth_endpoint):  # noqa: F811
    url, keys = auth_endpoint
    root = machine(tmp_path / "A", None)
    remote(root, f"s3://{BUCKET}/project", url, creds=(keys["admin"][0], "x" * 40))
    proc = start("train_survival", root)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "cannot reach DVC remote 'storage'" in err, err[-2000:]
    assert "x" * 40 not in err and not (root / "checkpoints").exists()


def test_finished_runs_leave_the_mirror(store, tmp_path, monkeypatch):
    """Issue 25: a finished run keeps one mirrored checkpoint; once its stage is pushed, `pod
    run` removes it from the mirror (``forget_finished_runs``); `pod prune-mirror` lists what
    is there with its age and removes what is older than ``--older-than`` days."""
    from ehrseq.ops.pod import forget_finished_runs

    endpoint, client, url = store
    a = machine(tmp_path / "A", endpoint, url=url)
    finish(start("pretrain_behrt", a))
    (kept,) = manifests(client, url)     # checkpoint_every_steps 1, and one left at the end
    run = kept.split("/checkpoints/", 1)[1].rsplit("/", 3)[0]   # pretrain_behrt/<key>
    assert run.startswith("pretrain_behrt/") and len(run.split("/")[1]) == 16, kept

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def prune(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "ehrseq.ops.pod", "prune-mirror", *args],
                           cwd=a, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    listed = prune()
    assert "1 run(s)" in listed and run in listed and "(removed)" not in listed, listed
    assert prune("--older-than", "1") and manifests(client, url) == [kept]   # not old enough

    monkeypatch.chdir(a)
    forget_finished_runs()
    assert manifests(client, url) == []
    assert "0 run(s)" in prune()

    # an interrupted run (not finished) is not forgotten; prune-mirror --older-than removes it
    b = machine(tmp_path / "B", endpoint, url=url)
    params = yaml.safe_load((b / "params.yaml").read_text())
    params["train"]["epochs"] = 1   # another run key
    (b / "params.yaml").write_text(yaml.safe_dump(params))
    finish(start("pretrain_behrt", b))
    ckpts = sorted((b / "checkpoints").rglob("state.json"))
    state = json.loads(ckpts[-1].read_text())
    loop = dict(state["loop"]["__dict__"])
    assert loop["finished"]
    monkeypatch.chdir(b)
    shutil.rmtree(b / "checkpoints")            # the machine is gone: nothing local finished
    forget_finished_runs()
    assert len(manifests(client, url)) == 1
    monkeypatch.chdir(a)
    assert "(removed)" in prune("--older-than", "0") and manifests(client, url) == []
