"""Check that evaluation keys fit the loaded circuit before any FHE work.

concrete-python 2.10 does not validate a server keyset against the circuit: keys generated for
another circuit with fewer bootstrap/keyswitch keys make the native runtime index past the end
of its key vector and abort the whole worker process (SIGSEGV, measured). ``ServerKeyset``
exposes no accessors, so this module reads the key counts straight from its Cap'n Proto
serialization (a ``ServerKeyset`` struct holding three lists: bootstrap keys, keyswitch keys,
packing keyswitch keys) and compares them with the keyset the circuit declares in its
``ProgramInfo``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

_WORD = 8
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_STRUCT, _LIST, _FAR = 0, 1, 2
_COMPOSITE = 7
_MAX_SEGMENTS = 512


class KeysetFormatError(ValueError):
    """The bytes are not a serialized concrete ``ServerKeyset``."""


@dataclass(frozen=True)
class KeysetShape:
    """How many keys of each kind a keyset holds."""

    bootstrap_keys: int
    keyswitch_keys: int
    packing_keyswitch_keys: int

    def describe(self) -> str:
        """Human-readable form for error messages."""
        return (f"{self.bootstrap_keys} bootstrap, {self.keyswitch_keys} keyswitch, "
                f"{self.packing_keyswitch_keys} packing-keyswitch key(s)")


def circuit_keyset_shape(program_info_json: bytes | str) -> KeysetShape:
    """Read the keyset a circuit expects from its serialized ``ProgramInfo`` JSON."""
    keyset: dict[str, Any] = json.loads(program_info_json)["keyset"]
    return KeysetShape(
        len(keyset.get("lweBootstrapKeys", [])),
        len(keyset.get("lweKeyswitchKeys", [])),
        len(keyset.get("packingKeyswitchKeys", [])),
    )


class _Message:
    """Just enough of a Cap'n Proto (unpacked) message reader to count list elements."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _WORD:
            raise KeysetFormatError("evaluation keys are shorter than one Cap'n Proto word")
        n_segments = _U32.unpack_from(data, 0)[0] + 1
        if n_segments > _MAX_SEGMENTS:
            raise KeysetFormatError(f"evaluation keys declare {n_segments} segments")
        header_words = (4 + 4 * n_segments + 7) // _WORD
        offset = header_words * _WORD
        if len(data) < offset:
            raise KeysetFormatError("evaluation keys are truncated inside the segment table")
        self.segments: list[tuple[int, int]] = []  # (byte start, word count)
        for index in range(n_segments):
            words = _U32.unpack_from(data, 4 + 4 * index)[0]
            self.segments.append((offset, words))
            offset += words * _WORD
        if offset != len(data):
            raise KeysetFormatError(
                f"evaluation keys have {len(data)} bytes, their segment table says {offset}"
            )
        self.data = data

    def word(self, segment: int, index: int) -> int:
        start, words = self.segments[segment]
        if not 0 <= index < words:
            raise KeysetFormatError("evaluation keys hold a pointer outside their segment")
        return _U64.unpack_from(self.data, start + index * _WORD)[0]

    def resolve(self, segment: int, index: int) -> tuple[int, int, int]:
        """Follow the pointer at (segment, word index): return (segment, target index, pointer)."""
        pointer = self.word(segment, index)
        if pointer & 3 == _FAR:
            double = (pointer >> 2) & 1
            pad_index = (pointer >> 3) & 0x1FFFFFFF
            pad_segment = pointer >> 32
            if pad_segment >= len(self.segments):
                raise KeysetFormatError("evaluation keys hold a far pointer to a missing segment")
            if not double:
                return self.resolve(pad_segment, pad_index)
            far = self.word(pad_segment, pad_index)
            tag = self.word(pad_segment, pad_index + 1)
            return far >> 32, (far >> 3) & 0x1FFFFFFF, tag
        offset = _signed30(pointer >> 2)
        return segment, index + 1 + offset, pointer

    def list_length(self, segment: int, index: int) -> int:
        seg, target, pointer = self.resolve(segment, index)
        if pointer == 0:
            return 0
        if pointer & 3 != _LIST:
            raise KeysetFormatError("evaluation keys hold a non-list where a key list belongs")
        if (pointer >> 32) & 7 == _COMPOSITE:
            return _signed30(self.word(seg, target) >> 2)
        return pointer >> 35

    def root_struct(self) -> tuple[int, int, int]:
        seg, target, pointer = self.resolve(0, 0)
        if pointer & 3 != _STRUCT:
            raise KeysetFormatError("evaluation keys do not start with a struct")
        data_words = (pointer >> 32) & 0xFFFF
        pointer_count = pointer >> 48
        return seg, target + data_words, pointer_count


def _signed30(value: int) -> int:
    value &= 0x3FFFFFFF
    return value - (1 << 30) if value & (1 << 29) else value


def serialized_keyset_shape(serialized_keys: bytes) -> KeysetShape:
    """Count the keys in serialized evaluation keys without deserialising them.

    Raises:
        KeysetFormatError: the bytes are not a Cap'n Proto ``ServerKeyset``.
    """
    message = _Message(serialized_keys)
    segment, first_pointer, pointer_count = message.root_struct()
    counts = [
        message.list_length(segment, first_pointer + i) if i < pointer_count else 0
        for i in range(3)
    ]
    return KeysetShape(*counts)
