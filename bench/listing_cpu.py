"""The server's CPU for one whole streamed key listing: the cost other clients share, as a figure
a busy machine barely moves (bystanders' latency, bench/listing_scale.py, moves with the load).

    .venv/bin/python -m bench.listing_cpu [--keys N] [--repeats N] [SOURCE ...]

For each SOURCE (a checkout; default this one), in turn: a private Valkey and one `coordinator
serve` from it, a process of `--keys` touched keys (as bench/listing_scale.py leaves them), then
`--repeats` listings by curl, each timed in the server's user + system CPU (/proc/PID/stat).
Prints one JSON line per SOURCE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from bench.listing_scale import LISTED, ROOT, _serve, touch_every_key
from coordinator.embedded import EmbeddedValkey


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listing_cpu(source: Path, keys: int, repeats: int) -> dict[str, object]:
    """Server CPU, wall time and bytes of `repeats` listings served from `source`."""
    with tempfile.TemporaryDirectory(prefix="bpc-listing-cpu-") as tmp:
        work = Path(tmp)
        with EmbeddedValkey(work / "valkey") as valkey, _serve(valkey, source, work) as srv:
            body = {"process_name": LISTED, "key_set_size": keys}
            httpx.post(f"{srv.url}/api/v1/process", json=body, timeout=30).raise_for_status()
            asyncio.run(touch_every_key(valkey.url, LISTED, keys))
            url = f"{srv.url}/api/v1/process/batch_keys/{LISTED}"
            runs = []
            for _ in range(repeats):
                before, start = cpu_seconds(srv.pid), time.perf_counter()
                curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", url]
                size = subprocess.run(curl, capture_output=True, text=True, check=True).stdout  # noqa: S603 - our own command line
                runs.append(
                    {
                        "server_cpu_s": round(cpu_seconds(srv.pid) - before, 2),
                        "wall_s": round(time.perf_counter() - start, 2),
                        "bytes": int(size),
                    }
                )
    return {"source": str(source), "keys": keys, "load": os.getloadavg(), "listings": runs}


def main() -> None:
    """Measure each source in turn; print a JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("sources", type=Path, nargs="*", default=[ROOT])
    args = parser.parse_args()
    for source in args.sources:
        print(json.dumps(listing_cpu(source, args.keys, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
