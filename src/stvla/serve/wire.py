"""The messages between `stvla serve` and its clients: msgpack maps whose numpy arrays travel as
{"__ndarray__": [dtype, shape, bytes]}, nothing else.

Only plain numeric and boolean dtypes are encoded or decoded: an object array (which would need
pickle) is refused on both sides, and a decoded array's bytes must fill exactly its declared shape.
Nothing here can make the receiver run code or read a file. Imports numpy and msgpack only, so the
robot side needs neither torch nor the rest of stvla.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

ARRAY = "__ndarray__"
DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64",
                    "float16", "float32", "float64"})  # what may travel: numbers, never objects


class WireError(ValueError):
    """A message that is not a valid stvla message (the text says what and where)."""


def _encode_item(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.name not in DTYPES:
            raise WireError(f"arrays of dtype {value.dtype} cannot be sent (allowed: {', '.join(sorted(DTYPES))})")
        return {ARRAY: [value.dtype.name, list(value.shape), np.ascontiguousarray(value).tobytes()]}
    if isinstance(value, np.generic):
        return value.item()
    raise WireError(f"a value of type {type(value).__name__} cannot be sent")


def pack(message: dict[str, Any]) -> bytes:
    """A message (str keys; values of numbers, strings, bytes, lists, dicts and numpy arrays) as bytes."""
    return msgpack.packb(message, default=_encode_item, use_bin_type=True)


def _decode_map(pairs: list[tuple[Any, Any]]) -> Any:
    if len(pairs) == 1 and pairs[0][0] == ARRAY:
        spec = pairs[0][1]
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)
                and isinstance(spec[1], list) and isinstance(spec[2], bytes)):
            raise WireError("an array must be [dtype, shape, bytes]")
        dtype, shape, data = spec
        if dtype not in DTYPES:
            raise WireError(f"array dtype {dtype!r} is not accepted (allowed: {', '.join(sorted(DTYPES))})")
        if not all(isinstance(n, int) and 0 <= n < 2**31 for n in shape) or len(shape) > 8:
            raise WireError(f"array shape {shape} is not a list of at most 8 non-negative sizes")
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if size != len(data):
            raise WireError(f"array of {dtype} {shape} needs {size} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    return {key: value for key, value in pairs}


def unpack(data: bytes, max_bytes: int | None = None) -> dict[str, Any]:
    """The message in `data`; a WireError (never another exception) when it is not one."""
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"message of {len(data)} bytes is over the limit of {max_bytes}")
    try:
        message = msgpack.unpackb(data, object_pairs_hook=_decode_map, raw=False, strict_map_key=True,
                                  max_bin_len=len(data), max_str_len=len(data), ext_hook=_refuse_extension)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
            msgpack.exceptions.StackError, UnicodeDecodeError) as error:
        raise WireError(f"not a msgpack message: {error or type(error).__name__}") from None
    if not isinstance(message, dict) or not all(isinstance(k, str) for k in message):
        raise WireError("a message must be a map with string keys")
    return message


def _refuse_extension(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not accepted")
