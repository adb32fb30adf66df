"""The SFTP channel's input buffer returns what paramiko's own would, byte for byte.

Real transfers over sshd go through it in every SSH transport test; this one drives it and
paramiko's ``BufferedPipe`` with the same feeds and reads, including reads that span
packets, reads of part of a packet and reads after the pipe closed.
"""

from __future__ import annotations

import random

import pytest
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

from workers.transports.ssh import _ChannelBuffer


def test_the_same_bytes_as_paramikos_buffer_for_any_feeds_and_reads():
    rng = random.Random(5)
    ours, theirs = _ChannelBuffer(), BufferedPipe()
    for _ in range(3000):
        if rng.random() < 0.45:
            data = rng.randbytes(rng.choice([0, 1, 4, 100, 32 * 1024, 70_000]))
            ours.feed(data)
            theirs.feed(data)
        elif len(theirs):
            size = rng.choice([1, 4, 13, 32 * 1024, 252 * 1024, 10**7])
            assert ours.read(size) == theirs.read(size)
        assert len(ours) == len(theirs)
        assert ours.read_ready() == theirs.read_ready()
    assert ours.empty() == theirs.empty()
    assert len(ours) == 0


def test_reading_waits_for_data_then_ends_when_closed():
    buffer = _ChannelBuffer()
    with pytest.raises(PipeTimeout):
        buffer.read(10, timeout=0.01)
    buffer.feed(b"abc")
    buffer.feed(b"defg")
    assert buffer.read(5) == b"abcde"
    buffer.close()
    assert buffer.read(5) == b"fg"  # what was buffered is still read after the close
    assert buffer.read(5) == b""
