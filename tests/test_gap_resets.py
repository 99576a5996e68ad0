"""Gap tracking cannot be switched off by one forged message: a ``seq`` that jumps
implausibly far or goes back is a reset (counted), and gaps are counted on from there."""

from __future__ import annotations

import pytest
from exesdb_sdk import Publisher, Subscriber

from .conftest import BrokerProcess, raw_publisher


@pytest.mark.timeout(30)
def test_a_forged_seq_does_not_stop_gap_counting(broker: BrokerProcess) -> None:
    gaps: list[int] = []
    with Subscriber(broker.backend, on_gap=lambda message, missing: gaps.append(missing)) as sub:
        sub.subscribe("health")
        with Publisher(broker.frontend) as pub:
            topic = pub._encoder.topic("health", "x")
            for n in range(1, 4):
                pub.publish("health", "x", "Custom", {"n": n})
            assert [sub.recv(timeout=5).seq for _ in range(3)] == [1, 2, 3]

            # an unsigned message with the real publisher's pub and seq 2**62, from elsewhere
            # (built by its encoder, which numbers it 4: the publisher goes on from 5)
            forged = pub._encoder.encode(topic, "Custom", {"forged": True}, None, None, None)
            forged = forged.replace(b"\xa3seq\x04", b"\xa3seq\xcf" + (2**62).to_bytes(8, "big"))
            raw = raw_publisher(broker.frontend)
            try:
                raw.send_multipart([topic, forged])
            finally:
                raw.close()
            assert sub.recv(timeout=5).seq == 2**62

            pub.publish("health", "x", "Custom", {"n": 5})  # seq 5: back from the forgery, a reset
            pub._encoder._seqs[topic] += 2  # two messages this subscriber never gets: a gap of 2
            pub.publish("health", "x", "Custom", {"n": 8})
            assert [sub.recv(timeout=5).seq for _ in range(2)] == [5, 8]
    assert (sub.stats.resets, sub.stats.gaps, gaps) == (2, 2, [2])
