"""The AWS SDK for JavaScript v3 (npm @aws-sdk/client-s3) against the gateway over HDFS.

It sends STREAMING-UNSIGNED-PAYLOAD-TRAILER bodies with a CRC32 trailer by default, a body
format boto3 over plain HTTP does not use. scripts/test.sh installs the package (tests/js)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.support.gateway import ADMIN_KEY, ADMIN_SECRET, GatewayProcess

JS = Path(__file__).parent / "js"


def test_js_sdk_v3_put_get_list_copy_multipart_delete(wgw: GatewayProcess) -> None:
    node = shutil.which("node")
    assert node, "node is part of the test environment (scripts/test.sh)"
    assert (JS / "node_modules" / "@aws-sdk" / "client-s3").is_dir(), "run scripts/test.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_ACCESS_KEY_ID": ADMIN_KEY, "AWS_SECRET_ACCESS_KEY": ADMIN_SECRET}
    r = subprocess.run(
        [node, "s3check.mjs", wgw.endpoint, "hbkt"],
        cwd=JS,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert out["putEtag"] is True
    assert out["putChecksum"]  # the CRC32 trailer was verified and echoed
    assert out["getEqual"] is True and out["contentType"] == "application/x-js"
    assert out["meta"] == {"from": "js"}
    assert out["listed"] == ["js/one.bin"]
    assert out["copyLength"] == 3 * 1024 * 1024 + 11
    assert out["mpuEtag"].endswith('-2"') and out["mpuEqual"] is True
    assert out["afterDelete"] == 0
