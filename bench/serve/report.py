#!/usr/bin/python3
"""Tables and chart of a bench/run_serve_bench.sh run (kiln perf JSON files in --dir).

Per concurrency level, batching off and on: throughput, p50/p99 latency, failures, the average
batch the server formed, and the latency bound (queue delay + one engine call at that batch,
from the server's own compute statistics). Then the protocol overhead: an empty model's round
trip over HTTP (binary and JSON tensors) and gRPC against a plain loopback TCP round trip.
"""
import argparse
import json
import os
import platform
import re
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def level(path):
    with open(path) as f:
        return json.load(f)["levels"][-1]


def batch_stats(metrics_path, model):
    """Average batch (inferences / executions) from the server's final metrics."""
    values = {}
    with open(metrics_path) as f:
        for line in f:
            m = re.match(r'(\w+)\{model="%s",version="1"\} (\S+)' % model, line)
            if m:
                values[m.group(1)] = float(m.group(2))
    return values


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--levels", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--delay-us", type=int, required=True)
    ap.add_argument("--max-batch", type=int, required=True)
    ap.add_argument("--date", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png", required=True)
    ap.add_argument("--command", required=True)
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split()]
    rows = []
    for c in levels:
        off, on = level(os.path.join(a.dir, "off-c%d.json" % c)), level(os.path.join(a.dir, "on-c%d.json" % c))
        rows.append((c, off, on))

    m = batch_stats(os.path.join(a.dir, "metrics-on.txt"), "on")
    avg_batch = m["nv_inference_count"] / max(1.0, m["nv_inference_exec_count"])
    # Per level: the batches formed while that level ran (metrics taken after each level).
    level_batch, before = {}, {"nv_inference_count": 0.0, "nv_inference_exec_count": 0.0}
    for c in levels:
        after = batch_stats(os.path.join(a.dir, "on-c%d.metrics" % c), "on")
        d_exec = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
        level_batch[c] = (after["nv_inference_count"] - before["nv_inference_count"]) / max(1.0, d_exec)
        before = after

    lines = []
    w = lines.append
    w("# `kiln serve`: dynamic batching on vs off, %s (%s)\n" % (a.model, a.date))
    w("Machine: %s, %d cores; CPU backend. Reproduce: `%s`.\n" % (cpu_name(), os.cpu_count(), a.command))
    w("Clients: `kiln perf` over HTTP with binary tensors, batch 1 per request, concurrency N (each client sends its "
      "next request when the last is answered), windows until p99 is stable within 10%%. Server: one instance using "
      "every core; each configuration in its own server process. **off**: `max_batch_size: 1`, no `dynamic_batching` (each request runs alone on an engine tuned "
      "for batch 1). **on**: `max_batch_size: %d`, `dynamic_batching { max_queue_delay_microseconds: %d }`.\n"
      % (a.max_batch, a.delay_us))
    w("| clients | off: infer/s | on: infer/s | on / off | off: p50 / p99 ms | on: p50 / p99 ms | on: avg batch "
      "| on: p99 bound ms | failed (off / on) |")
    w("|---|---|---|---|---|---|---|---|---|")
    for c, off, on in rows:
        s = on["server_us"]
        # The bound: a request waits at most the queue delay (or the batch ahead of it) and then
        # its own batch's engine call; the server reports the engine time per request.
        infer_ms = (s.get("compute_infer") or 0) / 1000.0
        bound = a.delay_us / 1000.0 + infer_ms
        failed = (off["requests"]["failed"], on["requests"]["failed"])
        w("| %d | %.1f | %.1f | **%.2f** | %.1f / %.1f | %.1f / %.1f | %s | %.1f | %d / %d |" % (
            c, off["throughput_infer_per_sec"], on["throughput_infer_per_sec"],
            on["throughput_infer_per_sec"] / off["throughput_infer_per_sec"],
            off["latency_us"]["p50"] / 1000, off["latency_us"]["p99"] / 1000,
            on["latency_us"]["p50"] / 1000, on["latency_us"]["p99"] / 1000,
            "%.2f" % level_batch[c],
            bound, failed[0], failed[1]))
    w("\nOver the whole run the batcher formed batches of %.2f requests on average "
      "(`nv_inference_count / nv_inference_exec_count`). The p99 bound column is the queue delay plus the "
      "server's mean engine time per batch at that level (`compute_infer`).\n" % avg_batch)

    w("## Protocol overhead per request\n")
    w("An empty model (Identity on 4 floats), one client, round trip as the client measures it, against a plain "
      "TCP round trip of 256 bytes on the same loopback (`bench/serve/loopback_rtt.cpp`).\n")
    w("| path | avg µs | p50 µs | p99 µs | over loopback (p50) |")
    w("|---|---|---|---|---|")
    with open(os.path.join(a.dir, "loopback.json")) as f:
        lo = json.load(f)
    w("| TCP loopback round trip | %.1f | %.1f | %.1f | — |" % (lo["avg_us"], lo["p50_us"], lo["p99_us"]))
    for name, label in (("empty-http-binary", "HTTP, binary tensors"), ("empty-http-json", "HTTP, JSON tensors"),
                        ("empty-grpc", "gRPC")):
        p = os.path.join(a.dir, name + ".json")
        if not os.path.exists(p):
            w("| %s | not run | | | |" % label)
            continue
        lv = level(p)
        lat = lv["latency_us"]
        w("| %s | %.1f | %.1f | %.1f | +%.1f µs |" % (label, lat["avg"], lat["p50"], lat["p99"],
                                                    lat["p50"] - lo["p50_us"]))
    with open(a.md, "w") as f:
        f.write("\n".join(lines) + "\n")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [c for c, _, _ in rows]
    ax1.plot(xs, [o["throughput_infer_per_sec"] for _, o, _ in rows], "o-", label="batching off")
    ax1.plot(xs, [n["throughput_infer_per_sec"] for _, _, n in rows], "o-", label="batching on")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("concurrent clients")
    ax1.set_ylabel("inferences / s")
    ax1.set_ylim(bottom=0)
    ax1.set_title("Throughput")
    ax1.legend()
    ax2.plot(xs, [o["latency_us"]["p99"] / 1000 for _, o, _ in rows], "o-", label="batching off")
    ax2.plot(xs, [n["latency_us"]["p99"] / 1000 for _, _, n in rows], "o-", label="batching on")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("concurrent clients")
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_title("p99 latency")
    ax2.legend()
    fig.suptitle("kiln serve, %s, CPU (%s)" % (a.model, a.date))
    fig.tight_layout()
    fig.savefig(a.png, dpi=110)


if __name__ == "__main__":
    main()
