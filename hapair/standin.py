"""A stand-in for a TCP service with no free server to run (Exchange RPC: 135, 60200, 60201).

    python -m hapair.standin LABEL IP PORT[,PORT...]

Each connection is greeted with `LABEL PORT`, so a client sees which real server and port it reached.
Then, line by line: `STREAM N` sends N bytes (with the sender's flow control); anything else is echoed.
When the client half-closes, the stand-in still answers `bye LABEL` before closing its side: that makes
half-close through the proxy visible.
"""

from __future__ import annotations

import asyncio
import sys


async def _serve(label: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        writer.write(f"{label} {port}\n".encode())
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                break
            if line.startswith(b"STREAM "):
                remaining = int(line.split()[1])
                chunk = b"x" * 65536
                while remaining > 0:
                    writer.write(chunk[: min(remaining, len(chunk))])
                    remaining -= len(chunk)
                    await writer.drain()
            else:
                writer.write(line)
                await writer.drain()
        writer.write(f"bye {label}\n".encode())
        await writer.drain()
    except (ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(label: str, ip: str, ports: list[int]) -> None:
    servers = []
    for port in ports:
        servers.append(await asyncio.start_server(lambda r, w, p=port: _serve(label, p, r, w), ip, port, backlog=1024))
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3].split(",")]))
