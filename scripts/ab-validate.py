#!/usr/bin/env python3
"""Compares two outpostctl binaries on one manifest set, interleaved so that the machine's
drift (frequency, neighbours) falls on both alike: RUNS runs of `BINARY validate SET` each,
alternating, with user+sys CPU time from wait4. Prints median, quartiles and minimum.

    scripts/ab-validate.py OLD_BINARY NEW_BINARY SET_DIR [RUNS]

A set from the bench: `OUTPOSTCTL_BENCH_DIR=/tmp/sets cargo bench --bench validate -- sets`
keeps set-10, set-100 and set-1000 there; their tokens come from the environment the bench
sets (AK_BENCH_TOKEN_0.., BENCH_CLIENT_KEY, BENCH_SSH_KEY), which this script sets too.
"""
import os
import statistics
import subprocess
import sys

old, new, set_dir = sys.argv[1], sys.argv[2], sys.argv[3]
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 150
env = dict(os.environ)
env.update(
    BENCH_CLIENT_KEY=open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "example-keys", "edge-client-key.pem")).read(),
    BENCH_SSH_KEY=open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "ssh-keys", "plain")).read(),
    AK_TOKEN="bench-token",
    NO_COLOR="1",
    COLUMNS="100",
)
for i in range(1000):
    env[f"AK_BENCH_TOKEN_{i}"] = f"bench-token-{i}"
times = {old: [], new: []}
for i in range(runs):
    for binary in (old, new) if i % 2 == 0 else (new, old):
        p = subprocess.Popen(
            [binary, "validate", set_dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        _, status, usage = os.wait4(p.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{binary} validate {set_dir} failed")
        times[binary].append((usage.ru_utime + usage.ru_stime) * 1000)
for binary in (old, new):
    v = sorted(times[binary])
    print(
        f"{binary}: median {statistics.median(v):.1f} ms, p25 {v[len(v) // 4]:.1f}, "
        f"p75 {v[3 * len(v) // 4]:.1f}, min {v[0]:.1f} (user+sys, {len(v)} runs)"
    )
