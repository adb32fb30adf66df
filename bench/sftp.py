"""MQI's SFTP upload and download against OpenSSH's ``sftp -b``: one big file, and many
small ones (each small file costs a few round trips).

Both clients talk to the same sshd on loopback, in the same run, alternating which goes
first.  OpenSSH's ``sftp`` goes through a master connection (``ControlMaster``) opened
beforehand, as MQI's transport keeps its connection open between transfers, so neither
pays for the SSH handshake.  MQI's figure includes everything a transfer does: temporary
names, SHA-256 of every file on both sides, the link checks, the renames; ``sftp`` only
copies.  MQI uses paramiko's public API only and is slower than OpenSSH; there is no target,
the ratios are for the record (a QA case spends minutes on a GPU).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bench.infra import Context, Outcome, Row, median
from workers.transports import SSHTransport
from workers.transports.ssh import close_thread_connections
from workers.transports.transfer import download_tree, upload_tree

BIG_BYTES = 200 * 1000 * 1000
SMALL_FILES = 2000
SMALL_FOLDERS = 10


def make_case_folder(path: Path, *, big_bytes: int, small_files: int, seed: int = 7) -> int:
    """One big file and many small ones (1-32 KiB) in sub-folders; returns the total size."""
    rng = random.Random(seed)  # noqa: S311 (file contents, not security)
    path.mkdir(parents=True)
    total = 0
    if big_bytes:
        with (path / "RP.plan-and-spots.bin").open("wb") as big:
            left = big_bytes
            while left:
                chunk = os.urandom(min(left, 16 * 1024 * 1024))
                big.write(chunk)
                left -= len(chunk)
        total += big_bytes
    for i in range(small_files):
        folder = path / f"logs-{i % SMALL_FOLDERS:02d}"
        folder.mkdir(exist_ok=True)
        size = rng.randint(1024, 32 * 1024)
        (folder / f"beam-{i:04d}.ptn").write_bytes(rng.randbytes(size))
        total += size
    return total


@contextlib.contextmanager
def openssh_master(server, control: Path) -> Iterator[list[str]]:
    """An OpenSSH master connection; yields the options that make ``sftp`` use it."""
    options = [*server.openssh_options(), "-o", f"ControlPath={control}"]
    master = subprocess.Popen(
        ["ssh", *options, "-o", "ControlMaster=yes", "-N", "127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not control.exists():
            if master.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OpenSSH master connection did not come up")
            time.sleep(0.02)
        yield [*options, "-o", "ControlMaster=no"]
    finally:
        master.terminate()
        master.wait(timeout=10)


def _sftp(options: list[str], batch: Path, line: str) -> float:
    batch.write_text(line + "\n")
    start = time.perf_counter()
    done = subprocess.run(
        ["sftp", *options, "-q", "-b", str(batch), "127.0.0.1"],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"sftp failed ({line}): {done.stderr.strip()}")
    return elapsed


def _same_tree(a: Path, b: Path) -> bool:
    def listing(root: Path) -> list[tuple[str, int]]:
        return sorted(
            (str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()
        )

    return listing(a) == listing(b)


def run(ctx: Context) -> Outcome:
    out = Outcome()
    big = BIG_BYTES if not ctx.options.quick else BIG_BYTES // 5
    work = ctx.root / "transfers"
    workloads = {
        f"one {big // 10**6} MB file": make_case_folder(work / "big", big_bytes=big, small_files=0),
        f"{SMALL_FILES:,} files of 1-32 KiB": make_case_folder(
            work / "small", big_bytes=0, small_files=SMALL_FILES
        ),
    }
    transport = SSHTransport(ctx.sshd.target)
    transport.stat("/")  # connect once, as a worker thread's cached connection would be
    transport.run("true", timeout=30)
    repeats = ctx.options.scaled(3, 1)
    with openssh_master(ctx.sshd, work / "control") as options:
        for (name, total), source in zip(workloads.items(), ("big", "small"), strict=True):
            times = _measure(transport, options, work, work / source, repeats)
            out.rows += _rows(name, total, times)
    close_thread_connections()
    shutil.rmtree(work)
    out.notes.append(
        f"SFTP: one {big // 10**6} MB file, and {SMALL_FILES:,} files of 1-32 KiB in "
        f"{SMALL_FOLDERS} sub-folders, each uploaded and downloaded {repeats}x by each client, "
        "alternating which goes first. MQI: `upload_tree` / `download_tree` over its cached "
        "paramiko connection (temporary names, SHA-256 of every byte on both sides, link "
        "checks, renames). Reference: OpenSSH `sftp -b` (`put -r` / `get -r`, default cipher "
        "and request settings) on the same sshd through a ControlMaster connection opened "
        "beforehand. Speed ratio = OpenSSH time / MQI time; no target (public API only)."
    )
    return out


def _measure(
    transport: SSHTransport, options: list[str], work: Path, source: Path, repeats: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"mqi up": [], "ssh up": [], "mqi down": [], "ssh down": []}
    batch = work / "batch"
    for rep in range(repeats):
        order = ("mqi", "ssh") if rep % 2 == 0 else ("ssh", "mqi")
        for who in order:
            remote = work / f"remote-{who}"
            start = time.perf_counter()
            if who == "mqi":
                upload_tree(transport, source, str(remote))
                times["mqi up"].append(time.perf_counter() - start)
            else:
                times["ssh up"].append(_sftp(options, batch, f"put -r {source} {remote}"))
            if not _same_tree(source, remote):
                raise AssertionError(f"{who} upload differs from the source")
        for who in order:
            remote, local = work / f"remote-{who}", work / f"back-{who}"
            start = time.perf_counter()
            if who == "mqi":
                download_tree(transport, str(remote), local)
                times["mqi down"].append(time.perf_counter() - start)
            else:
                times["ssh down"].append(_sftp(options, batch, f"get -r {remote} {local}"))
            if not _same_tree(source, local):
                raise AssertionError(f"{who} download differs from the source")
        for who in ("mqi", "ssh"):
            shutil.rmtree(work / f"remote-{who}")
            shutil.rmtree(work / f"back-{who}")
    return times


def _rows(name: str, total: int, times: dict[str, list[float]]) -> list[Row]:
    rows = []
    for direction, word in (("up", "upload"), ("down", "download")):
        ours, theirs = median(times[f"mqi {direction}"]), median(times[f"ssh {direction}"])
        rows += [
            Row(
                "sftp",
                f"{word} {name}, MQI (SFTP + SHA-256 both sides)",
                total / 1e6 / ours,
                "MB/s",
                detail=f"median {ours:.2f} s of {_shown(times[f'mqi {direction}'])}",
            ),
            Row(
                "sftp",
                f"{word} {name}, OpenSSH sftp -b (reference)",
                total / 1e6 / theirs,
                "MB/s",
                detail=f"median {theirs:.2f} s of {_shown(times[f'ssh {direction}'])}",
            ),
            Row("sftp", f"{word} {name} speed, MQI / OpenSSH", theirs / ours, "x"),
        ]
    return rows


def _shown(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + " s"
