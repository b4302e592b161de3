"""One command for an ephemeral GPU machine ("pod"): nothing is lost when it goes away.

    python -m ehrseq.ops.pod check-remote
    python -m ehrseq.ops.pod run -S model.size=large [-S KEY=VALUE ...] [--name NAME]
                             [--git-remote origin] [--require-gpu]
    python -m ehrseq.ops.pod prune-mirror [--older-than DAYS]

``run`` prints each step and stops at the first failure:

1. GPU: what nvidia-smi and torch see (a warning when torch cannot use a GPU;
   ``--require-gpu`` makes it an error).
2. DVC remote: reachable, bucket present, credentials accepted (``ehrseq.ops.remote``);
   stages that could never be restored from the run-cache are named.
3. Git: an identity (``dvc exp save`` needs one) and a remote that accepts a push (dry run).
4. The ``-S`` overrides are written to params.yaml (DVC's own ``-S`` code, as ``dvc exp run``)
   and validated (``ehrseq.params``).
5. ``dvc pull --run-cache --allow-missing``: the baseline's outputs and the run-cache.
6. Every stage that may run, in dvc.yaml order: ``dvc repro --pull --allow-missing STAGE``,
   then ``dvc push --run-cache STAGE...`` for the stages that ran or were restored. Each
   finished stage is in the remote before the next starts, so a pod lost mid-pipeline loses
   only the stage it was running: the same command on a new pod restores the finished ones
   from the run-cache ("is cached - skipping run") instead of recomputing them. "May run" is
   a stage DVC reports changed (missing outputs allowed, as ``--allow-missing``) or one
   downstream of it; every other stage is named as skipped and costs no ``dvc`` call (one
   call per stage took seconds even for a stage with nothing to do). Once a stage that trained
   is pushed, its finished runs leave the checkpoint mirror (they are in the run-cache now).
   A last ``dvc repro --pull --allow-missing`` of the whole DAG then runs (and pushes)
   anything that plan missed.
7. ``dvc exp save --force -n NAME`` and ``dvc exp push --force --no-cache GIT_REMOTE NAME``
   (the data is already in the DVC remote).
8. ``dvc metrics diff HEAD``: the experiment beside its baseline commit.

The experiment name is ``--name`` or, by default, made from the overrides
(``-S model.size=large`` gives ``pod-model-size-large``; no overrides give ``pod-baseline``):
the same command on the same commit gives the same name, so a rerun replaces the experiment of
the interrupted run instead of adding another. Continuing does not depend on the name: the
run-cache is keyed by each stage's command, dependencies and parameters.

A single ``dvc exp run`` would do steps 4, 6 and 7 too, but it pushes nothing until the whole
pipeline has finished: a pod lost in hour five would lose all five hours.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from ehrseq.ops.remote import RemoteCheckError, check_remote, run_cache_blockers

RAN = re.compile(r"Running stage '([^']+)'")
RESTORED = re.compile(r"Stage '([^']+)' is cached - skipping run")


class PodError(Exception):
    """A step failed; the message is one line."""


def say(msg: str) -> None:
    print(f"[pod] {msg}", flush=True)


def subprocess_env() -> dict:
    """The environment for dvc and git: this interpreter's bin/ first on PATH, so that stage
    commands (``python stages/...``) use the same environment even when it is not activated."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "GIT_TERMINAL_PROMPT": "0"}


def sh(cmd: list[str], timeout: float | None = None) -> str:
    """Run ``cmd``, echoing it and streaming its output; return the output or raise PodError."""
    say(f"$ {shlex.join(cmd)}")
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=subprocess_env(), bufsize=1)
    except FileNotFoundError as e:
        raise PodError(f"`{cmd[0]}` not found: activate the project's environment "
                       f"(source .venv/bin/activate)") from e
    lines = []
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        raise PodError(f"`{shlex.join(cmd)}` took longer than {timeout:.0f} s") from e
    if rc:
        raise PodError(f"`{shlex.join(cmd)}` exited with {rc}")
    return "".join(lines)


def gpu_status() -> tuple[bool, str]:
    """(usable, description): whether torch can use a CUDA GPU, and what nvidia-smi sees."""
    smi = ""
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        smi = "; ".join(x.strip() for x in r.stdout.splitlines() if x.strip())
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return True, (f"{len(names)} x {names[0]} (torch {torch.__version__}, "
                      f"CUDA {torch.version.cuda}){f'; nvidia-smi: {smi}' if smi else ''}")
    if smi:
        return False, (f"nvidia-smi sees {smi}, but torch {torch.__version__} cannot use it: "
                       f"install a CUDA build of torch (https://pytorch.org/get-started/locally/)")
    return False, "no CUDA GPU visible: neural models will train on the CPU"


def experiment_name(overrides: list[str]) -> str:
    """A stable experiment name from the overrides: ``pod-model-size-large``."""
    if not overrides:
        return "pod-baseline"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", "-".join(overrides)).strip("-").lower()
    if len(slug) > 60:
        digest = hashlib.sha256("\0".join(overrides).encode()).hexdigest()[:8]
        slug = f"{slug[:51].rstrip('-')}-{digest}"
    return f"pod-{slug}"


def apply_params(overrides: list[str]) -> None:
    """Write ``-S [file:]key=value`` overrides into the params files, with the code that
    ``dvc exp run -S`` uses (Hydra's override grammar), and validate params.yaml; on any error
    the files are left as they were."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    from ehrseq.params import ParamsError, load_params

    by_path = to_path_overrides(overrides)
    before = {p: Path(p).read_text() for p in by_path if Path(p).is_file()}
    try:
        for path, items in by_path.items():
            try:
                apply_overrides(path, items)
            except (DvcException, OSError) as e:
                cause = f": {e.__cause__}" if e.__cause__ else ""
                raise PodError(f"cannot apply {items} to {path}: {e}{cause}") from e
            say(f"{path}: {', '.join(items)}")
        try:
            load_params()
        except ParamsError as e:
            raise PodError(" ".join(str(e).split())) from e
    except PodError:
        for path, text in before.items():
            Path(path).write_text(text)
        raise


def stage_names() -> list[str]:
    """Pipeline stages in dvc.yaml order (``foreach``/``matrix`` variants expanded)."""
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], capture_output=True,
                         text=True, env=subprocess_env())
    if out.returncode:
        raise PodError(f"`dvc stage list` failed: {out.stderr.strip()}")
    return [s for s in out.stdout.split() if s]


def stages_to_run(stages: list[str]) -> list[str]:
    """Of ``stages`` (``dvc stage list``, in its order), those ``dvc repro --allow-missing``
    may run or restore: the ones DVC reports changed with missing outputs allowed, and every
    stage downstream of one (its dependencies change when they run)."""
    from dvc.repo import Repo

    with Repo(".") as repo, repo.lock:
        graph = repo.index.graph    # edges point from a stage to the stages it depends on
        todo = [s for s in repo.index.stages if s.changed(allow_missing=True)]
        seen = set(todo)
        while todo:
            for dependent in graph.predecessors(todo.pop()):
                if dependent not in seen:
                    seen.add(dependent)
                    todo.append(dependent)
        names = {s.addressing for s in seen}
    return [s for s in stages if s in names]


def check_git(remote: str) -> None:
    """What ``dvc exp save`` and ``dvc exp push`` need at the end, checked before any work: a
    git identity (a fresh pod often has none) and a git remote that accepts a push."""
    for key in ("user.name", "user.email"):
        if subprocess.run(["git", "config", key], capture_output=True).returncode:
            raise PodError(f"git {key} is not set and `dvc exp save` needs it: "
                           f"`git config --global {key} ...`")
    url = subprocess.run(["git", "remote", "get-url", remote], capture_output=True, text=True)
    if url.returncode:
        raise PodError(f"no git remote '{remote}': `dvc exp push` needs one "
                       f"(`git remote add {remote} URL`, or --git-remote NAME)")
    try:  # a dry-run push authenticates for writing (receive-pack) but sends nothing
        res = subprocess.run(["git", "push", "--dry-run", "--quiet", remote,
                              "HEAD:refs/heads/ehrseq-pod-write-check"],
                             capture_output=True, text=True, env=subprocess_env(), timeout=60)
    except subprocess.TimeoutExpired as e:
        raise PodError(f"git remote '{remote}' did not answer in 60 s") from e
    if res.returncode:
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
        raise PodError(f"cannot push to git remote '{remote}' ({url.stdout.strip()}): {why}")


def check_name(name: str) -> None:
    """``dvc exp save -n`` accepts only git ref names without '/': fail now, not at the end."""
    ok = "/" not in name and not subprocess.run(
        ["git", "check-ref-format", f"refs/exps/x/{name}"], capture_output=True).returncode
    if not ok:
        raise PodError(f"--name {name!r} is not a valid experiment name (a git ref name "
                       f"without '/', e.g. large-lr3e-4)")


def run(args: argparse.Namespace) -> None:
    """The pod workflow (see the module docstring)."""
    name = args.name or experiment_name(args.set_param)
    check_name(name)
    say(f"experiment '{name}' from {', '.join(args.set_param) or 'the committed params'}")

    say("1/8 GPU")
    ok, desc = gpu_status()
    if not ok and args.require_gpu:
        raise PodError(f"--require-gpu: {desc}")
    say(desc if ok else f"WARNING: {desc}")

    say("2/8 DVC remote")
    summary, warnings = check_remote(".")
    say(summary)
    for w in warnings:
        say(f"WARNING: {w}")
    for b in run_cache_blockers("."):
        say(f"WARNING: not restorable from the run-cache, re-runs on every new pod: {b}")

    say(f"3/8 git identity and remote '{args.git_remote}'")
    check_git(args.git_remote)

    say("4/8 params")
    apply_params(args.set_param)

    args.started = True
    say("5/8 pull the baseline's outputs and the run-cache")
    sh(["dvc", "pull", "--run-cache", "--allow-missing"])

    say("6/8 stages, each pushed when done")
    stages = stage_names()
    todo = stages_to_run(stages)
    for stage in stages:
        if stage not in todo:
            say(f"skip '{stage}': unchanged (no changed dependency, param or output)")
    ran, restored = [], []
    for cmd in [["dvc", "repro", "--pull", "--allow-missing", s] for s in todo] + [
            ["dvc", "repro", "--pull", "--allow-missing"]]:   # the whole DAG: what was missed
        out = sh(cmd)
        now_ran, now_restored = RAN.findall(out), RESTORED.findall(out)
        ran += now_ran
        restored += now_restored
        if now_ran or now_restored:
            sh(["dvc", "push", "--run-cache", *dict.fromkeys(now_ran + now_restored)])
        if now_ran:
            forget_finished_runs()
    say(f"ran: {', '.join(ran) or 'none'}; restored from the run-cache: "
        f"{', '.join(restored) or 'none'}")

    say("7/8 save and push the experiment")
    sh(["dvc", "exp", "save", "--force", "-n", name])
    sh(["dvc", "exp", "push", "--force", "--no-cache", args.git_remote, name])

    say("8/8 metrics: HEAD (baseline) vs the experiment")
    sh(["dvc", "metrics", "diff", "HEAD"])
    say(f"done. On a laptop: `git pull && dvc exp pull {args.git_remote} {name}`, then "
        f"`dvc exp show`, `dvc metrics diff HEAD {name}`; `dvc exp apply {name} && dvc pull` "
        f"for its models")


def _mirror():
    from ..train.mirror import CheckpointMirror

    return CheckpointMirror.from_dvc(".")


def forget_finished_runs() -> None:
    """Remove from the checkpoint mirror every run that finished here: its stage's outputs are
    in the DVC remote now (pushed with the run-cache), so a new pod restores them instead of
    resuming. Runs in progress elsewhere, and interrupted ones, stay (``prune-mirror``)."""
    from ..params import load_params
    from ..train.checkpoint import finished_runs

    rt = load_params().runtime
    if not rt.mirror_checkpoints or (mirror := _mirror()) is None:
        return
    gone = [run for run in finished_runs(rt.checkpoint_dir) if mirror.remove(run)]
    if gone:
        say(f"checkpoint mirror: removed {len(gone)} finished run(s), their outputs are in the "
            f"remote: {', '.join(gone)}")


def prune_mirror(older_than: float | None) -> None:
    """List the checkpoint mirror's runs with their age; with ``older_than`` (days) remove
    those not written to for longer (runs interrupted and never finished, e.g. under code that
    has changed since: no run key of today's code reaches them)."""
    mirror = _mirror()
    if mirror is None:
        say("no DVC remote configured: no checkpoint mirror")
        return
    runs = mirror.runs()
    say(f"checkpoint mirror {mirror.root}: {len(runs)} run(s)")
    for run, age in runs:
        old = older_than is not None and age > older_than
        if old:
            mirror.remove(run)
        say(f"  {run}  last written {age:.1f} days ago{'  (removed)' if old else ''}")


def pull_predictions() -> None:
    """`dvc pull` every model's test predictions (the outputs under data/predictions): what a
    machine that pulled nothing needs before `evaluate` runs again (a changed `report` param).
    `dvc repro --pull` cannot pull that dependency itself: it spans several stages' outputs and
    is the output of none (treeverse/dvc#11099); an unchanged `evaluate` is skipped anyway."""
    from ..evaluate.scoring import prediction_outputs

    here = Path.cwd().resolve()
    paths = [str(p.resolve().relative_to(here)) for p in prediction_outputs()]
    say(f"pulling {len(paths)} prediction outputs")
    sh(["dvc", "pull", "--allow-missing", *paths])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ehrseq.ops.pod``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ehrseq.ops.pod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check-remote", help="check the default DVC remote (exit 1 when unusable)")
    sub.add_parser("pull-predictions", help="dvc pull every model's test predictions")
    pm = sub.add_parser("prune-mirror", help="list the checkpoint mirror's runs; remove old ones")
    pm.add_argument("--older-than", type=float, metavar="DAYS",
                    help="remove the runs last written more than DAYS days ago")
    p = sub.add_parser("run", help="pull, run every stage (pushing each), push the experiment")
    p.add_argument("-S", "--set-param", action="append", default=[], metavar="[FILE:]KEY=VALUE",
                   help="parameter override, as for `dvc exp run -S` (repeatable)")
    p.add_argument("-n", "--name", help="experiment name (default: from the overrides)")
    p.add_argument("--git-remote", default="origin", help="git remote for `dvc exp push`")
    p.add_argument("--require-gpu", action="store_true", help="fail when torch sees no GPU")
    args = parser.parse_args(argv)
    try:
        if args.command == "check-remote":
            summary, warnings = check_remote(".")
            print(summary)
            for w in warnings:
                print(f"WARNING: {w}", file=sys.stderr)
        elif args.command == "pull-predictions":
            pull_predictions()
        elif args.command == "prune-mirror":
            prune_mirror(args.older_than)
        else:
            run(args)
    except RemoteCheckError as e:
        print(f"remote check failed: {e}", file=sys.stderr)
        return 1
    except PodError as e:
        say(f"FAILED: {e}")
        if getattr(args, "started", False):
            say("finished stages are in the remote: fix the cause and rerun the same command "
                "to continue")
        return 1
    except KeyboardInterrupt:
        say("interrupted: finished stages are in the remote; rerun the same command to continue")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
