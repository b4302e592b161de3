"""Preemption: a training run killed with SIGKILL, its local checkpoints deleted (a new
machine), restarted against a real S3-compatible server (moto): it resumes from the mirrored
checkpoint and ends with the same weights and metrics as a run never interrupted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import torch

from ehrseq.train.mirror import CheckpointMirror

WORKER = Path(__file__).parent / "workers" / "mirror_train.py"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="ckpt")
    yield endpoint, client
    server.stop()


def dvc_repo(path: Path, endpoint: str) -> Path:
    path.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "remote", "add", "-d", "store", "s3://ckpt/store"],
                ["dvc", "remote", "modify", "store", "endpointurl", endpoint]):
        subprocess.run(cmd, cwd=path, env=env, check=True, capture_output=True)
    return path


def run_worker(out: Path, repo: Path, pause: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WORKER), str(out), str(repo), str(pause)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]


def remote_steps(client) -> list[str]:
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="ckpt").get("Contents", [])]
    return sorted(k.split("/")[-2] for k in keys if k.endswith("manifest.json"))


def test_killed_run_resumes_from_mirror_on_a_new_machine(s3, tmp_path):
    endpoint, client = s3
    ref_repo = tmp_path / "ref"
    ref_repo.mkdir()  # no DVC remote here: the reference run is never interrupted
    proc = run_worker(tmp_path / "ref.json", ref_repo, 0.0)
    finish(proc)
    reference = json.loads((tmp_path / "ref.json").read_text())

    repo = dvc_repo(tmp_path / "pod", endpoint)
    proc = run_worker(tmp_path / "pod.json", repo, 0.25)
    deadline = time.time() + 300
    while len(remote_steps(client)) < 1 or "step000000008" not in " ".join(remote_steps(client)):
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.time() < deadline, "no checkpoint reached the remote"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "pod.json").exists()
    shutil.rmtree(repo / "checkpoints")  # the machine is gone with its disk

    proc = run_worker(tmp_path / "pod.json", repo, 0.0)
    finish(proc)
    resumed = json.loads((tmp_path / "pod.json").read_text())
    assert resumed["resumed_from_step"] >= 8
    assert resumed["sha"] == reference["sha"]
    assert resumed["val_loss"] == reference["val_loss"]


def test_corrupt_remote_checkpoint_falls_back(s3, tmp_path):
    endpoint, client = s3
    repo = dvc_repo(tmp_path / "pod", endpoint)
    mirror = CheckpointMirror.from_dvc(repo)
    assert mirror is not None
    from ehrseq.train.checkpoint import save_checkpoint

    run = tmp_path / "local"
    for i in (1, 2):
        ck = save_checkpoint(run, f"{i:06d}-step{i:09d}", {"model": {"w": torch.ones(3) * i}})
        mirror.push(ck, "key")
    # truncate a file of the newest remote checkpoint
    newest = "store/checkpoints/key/000002-step000000002/model.safetensors"
    client.put_object(Bucket="ckpt", Key=newest, Body=b"truncated")
    pulled = mirror.pull_latest("key", tmp_path / "fresh")
    assert pulled is not None and pulled.name == "000001-step000000001"
