"""Mirror training checkpoints to the DVC remote, so a preempted pod's work survives it.

Checkpoints live outside every stage output (``runtime.checkpoint_dir/<stage>/<run key>/<lr>/``,
the key is a hash of the stage, its params, its input data and its code). With
``runtime.mirror_checkpoints`` on and an S3 (or S3-compatible) default DVC remote configured,
every checkpoint the loop writes is copied to the same path under ``<remote url>/checkpoints/``,
its manifest last, so a half-uploaded checkpoint has no manifest and is never used. A run that
starts with no local checkpoint pulls the newest remote one that passes its SHA-256 manifest,
and resumes from it. A finished run keeps its last checkpoint only; ``python -m ehrseq.ops.pod``
removes a run from the mirror once the stage's outputs are in the DVC remote
(:meth:`CheckpointMirror.remove`), and ``pod prune-mirror`` lists or removes what runs
interrupted under older code left behind (docs/training.md, "When a run resumes").

Credentials come from where DVC reads them: ``.dvc/config.local`` (``dvc remote modify --local``)
or the standard AWS environment variables; nothing is written to git.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ..io import InputError

log = logging.getLogger(__name__)


class MirrorError(InputError):
    """The configured remote cannot hold checkpoints (credentials, bucket, endpoint)."""


class CheckpointMirror:
    """Upload and download checkpoint folders under ``root`` on an fsspec filesystem."""

    def __init__(self, fs, root: str, keep: int = 2):
        self.fs, self.root, self.keep = fs, root.rstrip("/"), keep

    @classmethod
    def from_dvc(cls, repo: str | Path = ".", check: bool = False) -> CheckpointMirror | None:
        """The default DVC remote of ``repo`` as a mirror; None when there is none.

        With ``check``, the remote is reached once before any training: wrong credentials, a
        missing bucket or an unreachable endpoint raise :class:`MirrorError` naming the
        remote, instead of hours of training whose checkpoints silently never leave the
        machine."""
        from dvc.repo import Repo

        try:
            with Repo(str(repo)) as r:
                conf = r.config
                name = conf["core"].get("remote")
                if not name:
                    return None
                remote = dict(conf["remote"][name])
        except Exception as err:  # noqa: BLE001 - no DVC repo or no remote: no mirror
            log.info("no checkpoint mirror (%s)", err)
            return None
        url = remote["url"]
        if url.startswith("s3://"):
            import s3fs

            kwargs = {"client_kwargs": {}, "config_kwargs": {"retries": {"max_attempts": 3}}}
            if remote.get("endpointurl"):
                kwargs["client_kwargs"]["endpoint_url"] = remote["endpointurl"]
            if remote.get("region"):
                kwargs["client_kwargs"]["region_name"] = remote["region"]
            if remote.get("access_key_id"):
                kwargs["key"] = remote["access_key_id"]
                kwargs["secret"] = remote.get("secret_access_key")
            fs = s3fs.S3FileSystem(**kwargs)
            mirror = cls(fs, url[len("s3://"):] + "/checkpoints")
            if check:
                mirror.check(f"DVC remote {name!r} ({url}"
                             + (f", endpoint {remote['endpointurl']}" if remote.get("endpointurl")
                                else "") + ")")
            return mirror
        if "://" not in url:  # a local or mounted-folder remote
            import fsspec

            base = url if os.path.isabs(url) else str((Path(repo) / ".dvc" / url).resolve())
            return cls(fsspec.filesystem("file"), base + "/checkpoints")
        log.warning("checkpoint mirror: remote %s (%s) is not supported; not mirroring",
                    name, url)
        return None

    def check(self, what: str) -> None:
        """List the mirror's bucket once; any failure is a :class:`MirrorError` naming ``what``."""
        bucket = self.root.split("/", 1)[0]
        try:
            self.fs.ls(bucket, detail=False)
        except Exception as err:  # noqa: BLE001 - credentials, bucket, endpoint: all fatal here
            raise MirrorError(
                f"checkpoint mirror: cannot reach {what}: {type(err).__name__}: {err}. Fix the "
                "remote's credentials (dvc remote modify --local <name> access_key_id ..., or "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or set runtime.mirror_checkpoints: "
                "false to train without a mirror") from None

    def _names(self, run_key: str) -> list[str]:
        """Complete remote checkpoints of a run (those with a manifest), oldest first."""
        base = f"{self.root}/{run_key}"
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        return sorted(n for n in names if n[:1].isdigit()
                      and self.fs.exists(f"{base}/{n}/manifest.json"))

    def push(self, ckpt: Path, run_key: str) -> None:
        """Copy one local checkpoint folder up (manifest last), then prune old remote ones."""
        dest = f"{self.root}/{run_key}/{ckpt.name}"
        files = sorted(p for p in ckpt.iterdir() if p.is_file())
        for p in [f for f in files if f.name != "manifest.json"] + [ckpt / "manifest.json"]:
            self.fs.put_file(str(p), f"{dest}/{p.name}")
        self.trim(run_key, self.keep)

    def trim(self, run_key: str, keep: int = 1) -> None:
        """Keep the newest ``keep`` remote checkpoints of a run (``keep`` <= 0: every one)."""
        for old in self._names(run_key)[:-keep] if keep > 0 else []:
            self.fs.rm(f"{self.root}/{run_key}/{old}", recursive=True)

    def remove(self, run_key: str) -> bool:
        """Remove every remote checkpoint of a run (or of a stage's runs: any prefix path);
        False when there was none."""
        base = f"{self.root}/{run_key}"
        if not self.fs.exists(base):
            return False
        self.fs.rm(base, recursive=True)
        return True

    def runs(self) -> list[tuple[str, float]]:
        """(run path ``<stage>/<run key>``, newest file's age in days) of every mirrored run."""
        import re
        import time

        key = re.compile(r"/([0-9a-f]{16})/")
        newest: dict[str, float] = {}
        for path, info in self.fs.find(self.root, detail=True).items():
            m = key.search(path[len(self.root):] + "/")
            if m is None:
                continue
            run = path[len(self.root) + 1: len(self.root) + m.end() - 1]
            mtime = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
            mtime = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)
            newest[run] = max(newest.get(run, 0.0), mtime)
        now = time.time()
        return sorted((run, (now - t) / 86400) for run, t in newest.items())

    def pull_latest(self, run_key: str, run_dir: Path) -> Path | None:
        """Download the newest remote checkpoint that verifies into ``run_dir``."""
        from .checkpoint import read_checkpoint

        names = self._names(run_key)
        if not names:
            log.info("no mirrored checkpoint of run %s on the remote", run_key)
        for name in reversed(names):
            tmp = run_dir / f".tmp-pull-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                for remote in self.fs.ls(f"{self.root}/{run_key}/{name}", detail=False):
                    self.fs.get_file(remote, str(tmp / remote.rsplit("/", 1)[-1]))
                read_checkpoint(tmp)  # SHA-256 of every file against the manifest
            except Exception as err:  # noqa: BLE001 - corrupt or partial: try an older one
                log.warning("remote checkpoint %s/%s unusable (%s)", run_key, name, err)
                shutil.rmtree(tmp, ignore_errors=True)
                continue
            final = run_dir / name
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            log.info("pulled checkpoint %s from the remote", name)
            return final
        return None
