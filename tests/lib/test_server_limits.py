"""The connection cap of ``registry serve`` stays well under the open-file limit, which it raises first."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from registry.lib.server import connection_limit


@pytest.mark.parametrize(
    ("wanted", "open_files", "expected"),
    [(1000, 1_048_576, 1000), (1000, 65_536, 1000), (1000, 1024, 384), (1000, 300, 22), (1000, 100, 1)],
    ids=["generous limit", "common container limit", "default soft limit", "tiny limit", "below the reserve"],
)
def test_the_cap_leaves_half_of_the_descriptors_after_the_reserve(wanted: int, open_files: int, expected: int) -> None:
    assert connection_limit(wanted, open_files) == expected


def test_serve_raises_the_soft_open_file_limit_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard open-file limit leaves nothing to raise")
    script = (
        "import resource\n"
        "_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from registry.lib.server import raise_open_file_limit\n"
        "raised = raise_open_file_limit()\n"
        "print(raised, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    raised, soft_now, hard_seen = (int(value) for value in output.split())
    assert soft_now == hard_seen
    assert raised == (hard_seen if hard_seen != resource.RLIM_INFINITY else 1 << 20)
    assert raised >= 256
