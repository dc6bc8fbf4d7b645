"""AMP arguments for values of any size: AMP caps one value at 64 KiB, so these travel in numbered chunks."""

from __future__ import annotations

import json
import pickle
from typing import Any

from twisted.protocols import amp


class _Chunked(amp.Argument):
    CHUNK = amp.MAX_VALUE_LENGTH

    def encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: amp.AMP) -> None:
        data = self.encode(objects[name.decode()])
        chunks = [data[i : i + self.CHUNK] for i in range(0, len(data), self.CHUNK)] or [b""]
        strings[name] = str(len(chunks)).encode()
        for i, chunk in enumerate(chunks):
            strings[name + b".%d" % i] = chunk

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: amp.AMP) -> None:
        count = int(strings[name])
        objects[name.decode()] = self.decode(b"".join(strings[name + b".%d" % i] for i in range(count)))


class JSON(_Chunked):
    """A JSON document."""

    def encode(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


class Pickled(_Chunked):
    """A Python object, for a channel between a process and the children it forked, and nothing else:
    unpickling runs code, so it is never used on a socket anyone else can reach."""

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes) -> Any:
        return pickle.loads(data)
