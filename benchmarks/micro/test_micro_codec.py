"""Codec micro-benchmarks: envelope encode and decode, typed-message build, dict vs typed.

Run them (needs pytest-benchmark: ``pip install pytest-benchmark``)::

    python -m pytest benchmarks/micro --benchmark-only

They are not part of the test suite: ``python -m pytest`` from the repository root collects
``tests/`` only (``testpaths``), and every test here carries the ``micro`` marker
(registered in ``conftest.py``), so ``-m "not micro"`` keeps them out of any wider run.

Everything runs in this one process, no sockets. The ``data`` map is a ``NodeHealth``'s
fields, with its free-form ``checks`` map grown until the packed map reaches about 100 B,
1 KB or 10 KB. Each operation has a plain-dict and a typed variant in the same benchmark
group, so the table compares them side by side:

- ``build``: ``dict(**fields)`` vs ``NodeHealth(**fields)`` (which validates every field; for
  ``checks: dict[str, Any]`` that means every key);
- ``encode``: ``Encoder.encode`` of an existing dict vs an existing ``NodeHealth`` (msgspec
  packs the struct itself as the data map);
- ``build+encode``: both, what ``publish`` vs ``publish_message`` cost before the socket;
- ``decode``: ``Decoder.decode`` of the body (an envelope with a dict ``data``) vs that plus
  ``NodeHealth.from_data``, which is what ``Subscriber.recv`` adds for a catalogue type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from exesdb_sdk.messages import NodeHealth
from exesdb_sdk.protocol import Decoder, Encoder

pytest.importorskip("pytest_benchmark")

pytestmark = pytest.mark.micro

SIZES = {"100B": 100, "1KB": 1024, "10KB": 10240}


def health_fields(size: int) -> dict[str, Any]:
    """NodeHealth fields whose packed map is about ``size`` bytes (at least, within one entry)."""
    fields: dict[str, Any] = {
        "node": "node1",
        "status": "healthy",
        "checks": {},
        "load_avg": 0.42,
        "memory_usage": 0.61,
        "disk_usage": 0.33,
    }
    index = 0
    while len(msgspec.msgpack.encode(fields)) < size:
        fields["checks"][f"check_{index:04d}"] = "pass"
        index += 1
    return fields


@pytest.fixture(params=list(SIZES), scope="module")
def size(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def fields(size: str) -> dict[str, Any]:
    return health_fields(SIZES[size])


@pytest.fixture
def encoder() -> Encoder:
    return Encoder(src="bench")


TOPIC = Encoder(src="bench").topic("health", "node_health:node1")


def run(benchmark: Any, group: str, size: str, function: Callable[[], Any]) -> Any:
    benchmark.group = f"{group} {size}"
    benchmark.extra_info["data_bytes"] = SIZES[size]
    return benchmark(function)


@pytest.mark.parametrize("kind", ["dict", "typed"])
def test_build(benchmark: Any, size: str, fields: dict[str, Any], kind: str) -> None:
    build: Callable[..., Any] = dict if kind == "dict" else NodeHealth
    built = run(benchmark, "build", size, lambda: build(**fields))
    assert (built.checks if kind == "typed" else built["checks"]) == fields["checks"]


@pytest.mark.parametrize("kind", ["dict", "typed"])
def test_encode(benchmark: Any, size: str, fields: dict[str, Any], encoder: Encoder, kind: str) -> None:
    data: Any = dict(fields) if kind == "dict" else NodeHealth(**fields)
    body = run(benchmark, "encode", size, lambda: encoder.encode(TOPIC, "NodeHealth", data))
    assert len(body) > SIZES[size]


@pytest.mark.parametrize("kind", ["dict", "typed"])
def test_build_encode(benchmark: Any, size: str, fields: dict[str, Any], encoder: Encoder, kind: str) -> None:
    build: Callable[..., Any] = dict if kind == "dict" else NodeHealth
    encode = encoder.encode
    body = run(benchmark, "build+encode", size, lambda: encode(TOPIC, "NodeHealth", build(**fields)))
    assert len(body) > SIZES[size]


@pytest.mark.parametrize("kind", ["dict", "typed"])
def test_decode(benchmark: Any, size: str, fields: dict[str, Any], encoder: Encoder, kind: str) -> None:
    frames = [TOPIC, encoder.encode(TOPIC, "NodeHealth", fields)]
    decode = Decoder().decode
    if kind == "dict":

        def function() -> Any:
            return decode(frames)[0].data

    else:

        def function() -> Any:
            return NodeHealth.from_data(decode(frames)[0].data)

    data = run(benchmark, "decode", size, function)
    expected = fields if kind == "dict" else NodeHealth(**fields)
    assert data == expected
