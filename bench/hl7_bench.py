"""HL7 listener benchmark: messages/s through MLLP to Kafka with ACKs.

Runs ``clsmon hl7 listen`` (a child process, its defaults) against the embedded Tansu broker.
Senders are asyncio MLLP clients (python-hl7) in this process; each sends PCD-01 monitor
messages (ORU^R01, 7 OBX rows of which 4 are mapped: SBP, DBP, MAP, HR; 2 containment rows and
the SpO2 pulse rate skipped) one after another, waiting for each ACK, as an MLLP sender does.
An ACK (AA) means every record of the message was acknowledged by Kafka (``acks=all``).

Figures: for 1 connection and for ``--connections`` at once: messages/s and records/s over the
whole run, and the ACK round trip p50/p99 seen by the senders; and the mapping alone
(``read_message`` in this process, no I/O) for comparison. The senders share the machine with
the listener and the broker (2 cores here), so the figures are a floor.

Usage: python bench/hl7_bench.py [--messages N] [--connections C]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchio import write_results  # noqa: E402  (bench/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import hl7  # noqa: E402
from hl7.mllp import open_hl7_connection  # noqa: E402
from hl7_corpus import monitor_mdc  # noqa: E402

from streams.interfaces.codes import load_tables  # noqa: E402
from streams.interfaces.hl7.inbound import Hl7Settings, read_message  # noqa: E402
from streams.kafka.local import free_port  # noqa: E402
from streams.kafka.tansu import EmbeddedBroker  # noqa: E402

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def messages(n: int, beds: int) -> list[list[bytes]]:
    """``n`` monitor messages spread over ``beds`` beds (one list per sender)."""
    out: list[list[bytes]] = [[] for _ in range(beds)]
    for i in range(n):
        bed = i % beds
        at = T0 + timedelta(minutes=i // beds)
        out[bed].append(monitor_mdc(f"B{bed}-{i}", at, 120 - i % 7, 70, 85, 80 + i % 5,
                                    patient=f"bed{bed:03d}"))
    return out


async def send_all(port: int, per_sender: list[list[bytes]]) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def sender(batch: list[bytes]) -> None:
        reader, writer = await open_hl7_connection("127.0.0.1", port, limit=1 << 20)
        for raw in batch:
            started = time.perf_counter()
            writer.writeblock(raw)
            await writer.drain()
            ack = hl7.parse((await reader.readblock()).decode())
            latencies.append(time.perf_counter() - started)
            code = str(ack.segment("MSA")(1))
            if code != "AA":
                raise RuntimeError(f"ACK {code}: {ack}")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender(b) for b in per_sender))
    return time.perf_counter() - started, latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def run_listener(bootstrap: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    log = workdir / f"listener-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "hl7", "listen", "--broker", bootstrap,
         "--host", "127.0.0.1", "--port", str(port), "--web-port", "0", "--id-authority",
         "HOSP", "--topic-prefix", f"bench{port}."],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log.open("wb"),
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while b"MLLP on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text(errors="replace"))
        time.sleep(0.1)
    return proc, port, log


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    settings = Hl7Settings(load_tables(), id_authority="HOSP")
    sample = [m for batch in messages(500, 10) for m in batch]
    started = time.perf_counter()
    for raw in sample:
        read_message(raw, settings)
    mapping = len(sample) / (time.perf_counter() - started)
    print(f"mapping alone: {mapping:,.0f} messages/s (read_message, one core)", flush=True)
    result: dict[str, object] = {"mapping_only_msgs_per_s": round(mapping),
                                 "records_per_message": 4, "broker": "tansu (embedded)",
                                 "runs": []}
    workdir = Path(tempfile.mkdtemp(prefix="clsmon-hl7-bench-"))
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        for connections in (1, args.connections):
            proc, port, log = run_listener(broker.bootstrap, workdir)
            try:
                asyncio.run(send_all(port, messages(100, connections)))  # warm-up
                seconds, latencies = asyncio.run(send_all(port, messages(args.messages,
                                                                         connections)))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            run = {"connections": connections, "messages": args.messages,
                   "msgs_per_s": round(args.messages / seconds, 1),
                   "records_per_s": round(4 * args.messages / seconds, 1),
                   "ack_p50_ms": round(percentile(latencies, 50) * 1000, 2),
                   "ack_p99_ms": round(percentile(latencies, 99) * 1000, 2)}
            print(f"{connections:>3} connection(s): {run['msgs_per_s']:,} messages/s "
                  f"({run['records_per_s']:,} records/s), ACK p50 {run['ack_p50_ms']} ms "
                  f"p99 {run['ack_p99_ms']} ms", flush=True)
            result["runs"].append(run)  # type: ignore[union-attr]
    write_results(ROOT / "bench" / "results" / "hl7.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
