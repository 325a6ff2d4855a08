"""Sizes and addresses as the CLI reads them."""

from __future__ import annotations

import pytest

from service.cli_commands.sizes import format_size, parse_size, size_value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4096", 4096),
        ("4K", 4096),
        ("4k", 4096),
        ("4KiB", 4096),
        ("4KB", 4096),
        ("2M", 2 << 20),
        ("1G", 1 << 30),
        ("1T", 1 << 40),
        ("0x100000000", 1 << 32),
        ("0X1000", 4096),
        ("0x1_0000", 65536),
        ("1_048_576", 1 << 20),
        (" 64K ", 65536),
        ("0", 0),
        ("16B", 16),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "K", "-4K", "1.5G", "4X", "0x", "0xg", "4iB", "4 K B", "1e6", "0b101"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [
        (0, "0"),
        (1, "1"),
        (4096, "4K"),
        (4097, "4097"),
        (65536, "64K"),
        (3 << 20, "3M"),
        (1 << 30, "1G"),
        (5 << 40, "5T"),
    ],
)
def test_format_size(nbytes: int, text: str) -> None:
    assert format_size(nbytes) == text
    assert parse_size(text) == nbytes


def test_size_value_passes_defaults_through() -> None:
    assert size_value(0) == 0
    assert size_value("8K") == 8192
