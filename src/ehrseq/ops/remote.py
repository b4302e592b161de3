"""Checks a pod makes before it spends GPU time: is the default DVC remote reachable, does its
bucket exist, are the credentials accepted, and can every stage be restored from the run-cache?

The remote is read the way DVC reads it: ``.dvc/config`` merged with ``.dvc/config.local`` (and
the user's global/system DVC config). Credentials come from ``config.local`` or, as for DVC
itself, from boto3's default chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``~/.aws``, instance roles). Secrets are never printed: a message names where
the credentials came from, never their values.

A remote is not needed to run the pipeline on a laptop (``dvc repro`` works without one); these
checks are for pod runs, where results that are not pushed are lost with the machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 5
SECRET_KEYS = ("access_key_id", "secret_access_key", "session_token")
BAD_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                   "ExpiredToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed")


class RemoteCheckError(Exception):
    """The remote cannot be used; the message is one line that says what to do."""


@dataclass
class Remote:
    """The default DVC remote, with its merged options (secrets included: never print them)."""

    name: str
    url: str
    options: dict
    secrets_in_git: list[str]  # credential keys found in the committed .dvc/config

    @property
    def scheme(self) -> str:
        return urlparse(self.url).scheme

    @property
    def bucket(self) -> str:
        return urlparse(self.url).netloc

    @property
    def endpoint(self) -> str | None:
        return self.options.get("endpointurl")

    @property
    def where(self) -> str:
        """The remote for messages: name, URL and endpoint (no secrets in either)."""
        at = f" at {self.endpoint}" if self.endpoint else ""
        return f"remote '{self.name}' ({self.url}{at})"


def default_remote(root: str | Path = ".") -> Remote:
    """The default DVC remote of the repository at ``root``, or RemoteCheckError if none."""
    from dvc.config import Config, ConfigError

    dvc_dir = Path(root) / ".dvc"
    if not dvc_dir.is_dir():
        raise RemoteCheckError(f"{Path(root).resolve()} is not a DVC repository (no .dvc/)")
    try:
        config = Config(dvc_dir=str(dvc_dir))
        repo_level = config.load_one("repo")
    except ConfigError as e:
        raise RemoteCheckError(f"invalid DVC config: {e}") from e
    name = config["core"].get("remote")
    if not name:
        raise RemoteCheckError(
            "no default DVC remote: add one with `dvc remote add -d storage s3://BUCKET/PATH` "
            "(and `dvc remote modify storage endpointurl URL` for an S3-compatible server); "
            "without a remote the pipeline still runs locally with `dvc repro`, but a pod "
            "would lose its results")
    if name not in config["remote"]:
        raise RemoteCheckError(f"the default remote '{name}' is not defined in .dvc/config "
                               f"(`dvc remote list` shows those that are)")
    options = dict(config["remote"][name])
    in_git = [k for k in SECRET_KEYS if k in repo_level.get("remote", {}).get(name, {})]
    return Remote(name=name, url=options["url"], options=options, secrets_in_git=in_git)


def credential_source(remote: Remote) -> str:
    """Where the credentials for ``remote`` come from, in words (never their values)."""
    if remote.secrets_in_git:
        return ".dvc/config (committed to git!)"
    if "access_key_id" in remote.options:
        return ".dvc/config.local"
    if "profile" in remote.options:
        return f"AWS profile '{remote.options['profile']}'"
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    return "boto3's default chain (AWS_PROFILE, ~/.aws, instance role)"


def s3_client(remote: Remote):
    """A boto3 S3 client configured like DVC's (endpoint, region, credentials, TLS), with short
    timeouts and a single attempt so that a check fails in seconds, not minutes."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    o = remote.options
    if o.get("credentialpath"):
        os.environ.setdefault("AWS_SHARED_CREDENTIALS_FILE", o["credentialpath"])
    if o.get("configpath"):
        os.environ.setdefault("AWS_CONFIG_FILE", o["configpath"])
    session = boto3.Session(
        profile_name=o.get("profile"),
        aws_access_key_id=o.get("access_key_id"),
        aws_secret_access_key=o.get("secret_access_key"),
        aws_session_token=o.get("session_token"),
    )
    anonymous = o.get("allow_anonymous_login") and session.get_credentials() is None
    config = Config(connect_timeout=o.get("connect_timeout", CONNECT_TIMEOUT_S),
                    read_timeout=o.get("read_timeout", READ_TIMEOUT_S),
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    signature_version=UNSIGNED if anonymous else None)
    return session.client(
        "s3",
        endpoint_url=remote.endpoint,
        region_name=o.get("region") or session.region_name or "us-east-1",
        use_ssl=o.get("use_ssl", True),
        verify=o.get("ssl_verify"),
        config=config,
    )


def check_s3(remote: Remote) -> None:
    """head_bucket on the remote's bucket; RemoteCheckError with the fix when it fails."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    endpoint = remote.endpoint or "AWS S3"
    fix_endpoint = f"`dvc remote modify {remote.name} endpointurl URL`"
    try:
        client = s3_client(remote)
    except ValueError as e:  # e.g. an endpoint URL without http(s)://
        raise RemoteCheckError(f"{remote.where}: {e}; fix it with {fix_endpoint}") from e
    try:
        client.head_bucket(Bucket=remote.bucket)
    except (NoCredentialsError, PartialCredentialsError) as e:
        raise RemoteCheckError(
            f"{remote.where}: no usable credentials ({e}); set them with `dvc remote modify "
            f"--local {remote.name} access_key_id ...` and `... secret_access_key ...`, or "
            f"export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from e
    except (ConnectionError, ReadTimeoutError) as e:
        raise RemoteCheckError(
            f"{remote.where}: cannot reach {endpoint} ({type(e).__name__}: {e}): is the server "
            f"up and the URL right? Fix it with {fix_endpoint}") from e
    except ClientError as e:
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = e.response.get("Error", {}).get("Code", "")
        if status == 404 or code in ("404", "NoSuchBucket"):
            mb = f"aws s3 mb s3://{remote.bucket}"
            if remote.endpoint:
                mb += f" --endpoint-url {remote.endpoint}"
            headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            odd = "" if any(h.lower().startswith("x-amz") for h in headers) else (
                f" (the answer has no x-amz-* header: if {endpoint} is not an S3 server, "
                f"fix the URL with {fix_endpoint})")
            raise RemoteCheckError(
                f"{remote.where}: bucket '{remote.bucket}' does not exist{odd}. DVC never "
                f"creates a bucket: create it with `{mb}`") from e
        if status == 403:
            raise RemoteCheckError(_forbidden(remote, client, e)) from e
        raise RemoteCheckError(f"{remote.where}: {endpoint} answered {status} {code}: "
                               f"{e.response.get('Error', {}).get('Message', '')}") from e
    except BotoCoreError as e:
        raise RemoteCheckError(f"{remote.where}: {type(e).__name__}: {e}") from e


def _forbidden(remote: Remote, client, error) -> str:
    """head_bucket answers a bare 403; a listing says why (bad key, bad secret, no right)."""
    from botocore.exceptions import BotoCoreError, ClientError

    code = ""
    try:
        client.list_objects_v2(Bucket=remote.bucket, MaxKeys=1)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
    except BotoCoreError:
        pass
    source = credential_source(remote)
    if code in BAD_CREDENTIALS:
        return (f"{remote.where}: credentials rejected ({code}); they come from {source}: "
                f"fix them with `dvc remote modify --local {remote.name} access_key_id ...` / "
                f"`... secret_access_key ...` or the AWS_* variables")
    return (f"{remote.where}: access denied (403 {code or 'Forbidden'}) to bucket "
            f"'{remote.bucket}' with credentials from {source}: they need to list, read and "
            f"write s3://{remote.bucket}/")


def check_remote(root: str | Path = ".") -> tuple[str, list[str]]:
    """Check the default remote of the repository at ``root``.

    Returns a one-line summary and a list of warnings; raises RemoteCheckError with a one-line
    message (what failed and how to fix it) when the remote cannot be used.
    """
    remote = default_remote(root)
    warnings = []
    if remote.secrets_in_git:
        warnings.append(
            f"credentials ({', '.join(remote.secrets_in_git)}) are in .dvc/config, which git "
            f"tracks: move them to .dvc/config.local with `dvc remote modify --local "
            f"{remote.name} KEY VALUE` and `dvc remote modify --unset {remote.name} KEY`")
    if remote.scheme == "s3":
        check_s3(remote)
        return (f"{remote.where}: bucket reachable, credentials accepted "
                f"(from {credential_source(remote)})", warnings)
    kind = f"{remote.scheme}://" if remote.scheme else "a local path"
    warnings.append(f"{remote.where}: only s3:// remotes are checked, not {kind}")
    return f"{remote.where}: not checked", warnings


def run_cache_blockers(root: str | Path = ".") -> list[str]:
    """Stages a fresh machine cannot restore from the run-cache, with the reason for each.

    Such a stage re-runs on every new pod: an output with ``persist: true`` or ``cache: false``
    (an uncached output is never pushed) unless git tracks it (stage ``code``'s listings come
    with every clone), ``always_changed``, or no deps or no outs.
    """
    import subprocess

    from dvc.repo import Repo

    tracked = set(subprocess.run(["git", "ls-files"], cwd=root, capture_output=True,
                                 text=True).stdout.split())
    blockers = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            if not getattr(stage, "cmd", None):
                continue  # a .dvc file, not a pipeline stage
            name = stage.addressing
            if stage.always_changed:
                blockers.append(f"{name}: always_changed")
            if not stage.deps or not stage.outs:
                blockers.append(f"{name}: no {'deps' if not stage.deps else 'outs'}")
            for out in stage.outs:
                if out.persist:
                    blockers.append(f"{name}: {out.def_path} has persist: true")
                if not out.use_cache and out.def_path not in tracked:
                    blockers.append(f"{name}: {out.def_path} has cache: false")
    return blockers
