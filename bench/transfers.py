"""Upload and download of a case folder over SFTP, against OpenSSH's ``sftp -b``.

Both clients talk to the same sshd on loopback, in the same run, alternating which goes
first.  OpenSSH's ``sftp`` goes through a master connection (``ControlMaster``) opened
beforehand, as MQI's transport keeps its connection open between transfers, so neither
pays for the SSH handshake.  MQI's figure includes everything a transfer does: temporary
names, SHA-256 of every file on both sides, the renames; ``sftp`` only copies.
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

from bench.infra import Context, Outcome, Row, at_least, median
from workers.transports import SSHTransport
from workers.transports.ssh import close_thread_connections
from workers.transports.transfer import download_tree, upload_tree

BIG_BYTES = 500 * 1000 * 1000
SMALL_FILES = 1000
SMALL_FOLDERS = 10


def make_case_folder(path: Path, *, big_bytes: int, small_files: int, seed: int = 7) -> int:
    """One big file and many small ones (1-32 KiB) in sub-folders; returns the total size."""
    rng = random.Random(seed)  # noqa: S311 (file contents, not security)
    path.mkdir(parents=True)
    total = 0
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


def transfers(ctx: Context) -> Outcome:
    out = Outcome()
    server = ctx.sshd
    work = ctx.root / "transfers"
    source = work / "case"
    total = make_case_folder(
        source,
        big_bytes=BIG_BYTES if not ctx.options.quick else BIG_BYTES // 5,
        small_files=SMALL_FILES,
    )
    transport = SSHTransport(server.target)
    transport.stat("/")  # connect once, as a worker thread's cached connection would be
    transport.run("true", timeout=30)
    repeats = ctx.options.scaled(3, 1)
    times: dict[str, list[float]] = {"mqi up": [], "ssh up": [], "mqi down": [], "ssh down": []}
    batch = work / "batch"
    with openssh_master(server, work / "control") as options:
        for rep in range(repeats):
            ours_first = rep % 2 == 0
            for who in ("mqi", "ssh") if ours_first else ("ssh", "mqi"):
                remote = work / f"remote-{who}"
                start = time.perf_counter()
                if who == "mqi":
                    upload_tree(transport, source, str(remote))
                    times["mqi up"].append(time.perf_counter() - start)
                else:
                    times["ssh up"].append(_sftp(options, batch, f"put -r {source} {remote}"))
                if not _same_tree(source, remote):
                    raise AssertionError(f"{who} upload differs from the source")
            for who in ("mqi", "ssh") if ours_first else ("ssh", "mqi"):
                remote = work / f"remote-{who}"
                local = work / f"back-{who}"
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
    close_thread_connections()
    shutil.rmtree(work)
    megabytes = total / 1e6
    for direction, word in (("up", "upload"), ("down", "download")):
        ours, theirs = median(times[f"mqi {direction}"]), median(times[f"ssh {direction}"])
        ratio = theirs / ours
        out.rows += [
            Row(
                "transfers",
                f"{word}, MQI (SFTP + SHA-256 both sides)",
                megabytes / ours,
                "MB/s",
                "",
                None,
                f"median {ours:.2f} s of {_shown(times[f'mqi {direction}'])}",
            ),
            Row(
                "transfers",
                f"{word}, OpenSSH sftp -b (reference)",
                megabytes / theirs,
                "MB/s",
                "",
                None,
                f"median {theirs:.2f} s of {_shown(times[f'ssh {direction}'])}",
            ),
            Row(
                "transfers",
                f"{word} speed, MQI / OpenSSH",
                ratio,
                "x",
                "≥ 0.9",
                at_least(ratio, 0.9),
            ),
        ]
    size = f"{BIG_BYTES // 10**6 if not ctx.options.quick else BIG_BYTES // 5 // 10**6} MB"
    out.notes.append(
        f"Transfers: a case folder of one {size} file and {SMALL_FILES:,} files of 1-32 KiB "
        f"in {SMALL_FOLDERS} sub-folders ({megabytes:,.0f} MB), uploaded and downloaded "
        f"{repeats}x by each client, alternating which goes first. MQI: `upload_tree` / "
        "`download_tree` over its cached paramiko connection (temporary names, SHA-256 of "
        "every byte on both sides, renames). Reference: OpenSSH `sftp -b` (`put -r` / "
        "`get -r`, default cipher and request settings) on the same sshd through a "
        "ControlMaster connection opened beforehand. Speed ratio = OpenSSH time / MQI time."
    )
    return out


def _shown(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + " s"
