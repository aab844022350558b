"""The load generator: wrk with post.lua, POSTing form bodies with HTTP Basic client authentication.

wrk runs as a subprocess with a hard timeout (common.loadgen); what the request carries (path,
Authorization, bodies, the pattern a good response matches) goes to post.lua through the environment,
so no credential is on a command line or in an error message. The parser is a plain function,
checkable against saved output.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from common.loadgen import WrkResult, parse_wrk, run_tool, search, wrk_argv

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "post.lua"

_UNEXPECTED = re.compile(r"^Unexpected responses: (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Workload:
    """What wrk sends: one path, one Authorization header, bodies taken in turn, and a good body's pattern."""

    path: str
    authorization: str
    bodies: list[str]
    expect: str  # a Lua pattern


@dataclass(frozen=True)
class PostResult(WrkResult):
    unexpected: int  # post.lua: other statuses below 400 than 200, and 200s without the expected body

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors + self.unexpected


def parse_post(text: str) -> PostResult:
    """Read `wrk --latency -s post.lua` output."""
    result = parse_wrk(text)
    unexpected = search(_UNEXPECTED, text, "'Unexpected responses' line from post.lua").group(1)
    return PostResult(**dataclasses.asdict(result), unexpected=int(unexpected))


def run_wrk(address: str, seconds: int, prefix: list[str], workload: Workload, scratch: Path) -> PostResult:
    """Saturate address for `seconds` with one wrk thread and WRK_CONNECTIONS keep-alive connections."""
    bodies = scratch / "wrk-bodies.txt"
    bodies.write_text("\n".join(workload.bodies) + "\n")
    env = dict(os.environ)
    env.update(
        BENCH_PATH=workload.path,
        BENCH_AUTHORIZATION=workload.authorization,
        BENCH_BODIES=str(bodies),
        BENCH_EXPECT=workload.expect,
    )
    argv = [*wrk_argv(prefix, seconds), "-s", str(SCRIPT), f"http://{address}{workload.path}"]
    try:
        return parse_post(run_tool("wrk", argv, seconds, env))
    finally:
        bodies.unlink(missing_ok=True)  # the bodies hold access tokens
