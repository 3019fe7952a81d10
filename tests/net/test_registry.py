"""The remote AE registry (C-MOVE destinations)."""

from __future__ import annotations

import pytest

from ciams.archive import Archive
from ciams.errors import InvalidRequestError
from ciams.net import AEExistsError, AERegistry


@pytest.fixture
def registry(archive: Archive) -> AERegistry:
    return AERegistry(archive.sessions)


def test_add_get_list_remove(registry: AERegistry) -> None:
    added = registry.add("PACS1", "10.0.0.5", 104, "main PACS")
    registry.add(" WS2 ", "ws2.example.org", 11112)

    assert added.ae_title == "PACS1"
    got = registry.get("PACS1")
    assert got is not None
    assert (got.host, got.port, got.description) == ("10.0.0.5", 104, "main PACS")
    assert got.created_at.tzinfo is not None
    assert registry.get("WS2") is not None  # spaces around an AE title are not significant
    assert [ae.ae_title for ae in registry.list()] == ["PACS1", "WS2"]
    assert registry.get("pacs1") is None  # AE titles are case-sensitive

    assert registry.remove("PACS1") is True
    assert registry.remove("PACS1") is False
    assert registry.get("PACS1") is None
    assert [ae.ae_title for ae in registry.list()] == ["WS2"]


def test_duplicate_title_is_refused_unless_replaced(registry: AERegistry) -> None:
    registry.add("PACS1", "10.0.0.5", 104)

    with pytest.raises(AEExistsError) as err:
        registry.add("PACS1", "10.0.0.6", 105)
    assert err.value.http_status == 409
    assert "ciams ae remove" in err.value.hint

    registry.add("PACS1", "10.0.0.6", 105, replace=True)
    got = registry.get("PACS1")
    assert got is not None and (got.host, got.port) == ("10.0.0.6", 105)
    assert len(registry.list()) == 1


@pytest.mark.parametrize(
    "title",
    ["", "   ", "A" * 17, "BAD\\AE", "TAB\tAE", "ÄRZTE", "NL\nAE"],
)
def test_invalid_ae_titles(registry: AERegistry, title: str) -> None:
    with pytest.raises(InvalidRequestError):
        registry.add(title, "127.0.0.1", 104)
    assert registry.list() == []


@pytest.mark.parametrize("port", [0, -1, 65536, "http", True])
def test_invalid_ports(registry: AERegistry, port: object) -> None:
    with pytest.raises(InvalidRequestError, match="port"):
        registry.add("PACS1", "127.0.0.1", port)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["", "two words", "x" * 256])
def test_invalid_hosts(registry: AERegistry, host: str) -> None:
    with pytest.raises(InvalidRequestError, match="host"):
        registry.add("PACS1", host, 104)


def test_sixteen_characters_is_the_limit(registry: AERegistry) -> None:
    registry.add("A" * 16, "127.0.0.1", 104)
    assert registry.get("A" * 16) is not None
