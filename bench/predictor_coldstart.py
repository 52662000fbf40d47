"""Cold start: process start to model-ready, predictor (1,115 stores) vs a trivial KServe model.

    python bench/predictor_coldstart.py [--workdir build/bench] [--repeat 3]

Both servers are started the same way (same ModelServer flags, loopback ports), alternately, and
timed until ``/v2/models/storecast/ready`` answers 200; the predictor loads its version from the
MLflow registry (``models:/storecast@champion``): the embedded sqlite store, and a real ``mlflow
server`` over it (the registry as deployed). The resident memory of each is read after a few
requests, and the predictor's again once it has re-resolved its alias a few times.
Goals: predictor <= trivial + 2 s; predictor RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from predictor_common import PREDICTOR, TRIVIAL, add_common_arguments, free_port, prepare_version, start

from pipelines.stack import Service, wait_ready


def _touch(url: str) -> None:
    body = {"inputs": [{"name": "store_id", "shape": [7], "datatype": "BYTES", "data": ["1"] * 7},
                       {"name": "ds", "shape": [7], "datatype": "BYTES",
                        "data": [f"2015-08-0{d}" for d in range(1, 8)]}]}
    req = urllib.request.Request(f"{url}/v2/models/storecast/infer", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    for _ in range(20):
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()


def mlflow_server(version, log: Path) -> tuple[subprocess.Popen, str]:
    """A real ``mlflow server`` over the benchmark's sqlite store: the registry as deployed."""
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                             str(port), "--workers", "1", "--backend-store-uri", version.tracking_uri,
                             "--serve-artifacts", "--artifacts-destination", str(version.workdir / "mlartifacts")],
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"), cwd=version.workdir)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/health", Service("mlflow", proc, port, log=log), 120)
    except BaseException:
        proc.kill()
        raise
    return proc, url


def main() -> None:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    version = prepare_version(args)
    server_proc, server_url = mlflow_server(version, version.workdir / "coldstart-mlflow.log")
    times: dict[str, list[float]] = {}
    rss: dict[str, list[float]] = {}
    # the predictor re-resolves its alias after 2 s; with sqlite MLflow's client (and SQLAlchemy) is then
    # imported into the server process, with an mlflow server it asks the REST API
    commands = {"trivial": (TRIVIAL, [], version.tracking_uri),
                "predictor": (PREDICTOR, ["--refresh-seconds", "2"], version.tracking_uri),
                "predictor-server": (PREDICTOR, ["--refresh-seconds", "2"], server_url)}
    try:
        for i in range(args.repeat):
            for name, (command, extra, registry) in commands.items():
                server = start(command, version.workdir / f"coldstart-{name}.log", {"MLFLOW_TRACKING_URI": registry},
                               extra)
                try:
                    times.setdefault(name, []).append(server.wait_ready())
                    _touch(server.url)
                    rss.setdefault(name, []).append(server.rss_mb())
                    if name != "trivial":
                        time.sleep(6)
                        _touch(server.url)
                        rss.setdefault(f"{name}-steady", []).append(server.rss_mb())
                finally:
                    server.stop()
                print(f"run {i + 1}: {name:16s} ready in {times[name][-1]:.2f} s, RSS {rss[name][-1]:.0f} MB"
                      + (f", {rss[name + '-steady'][-1]:.0f} MB after refreshes" if name != "trivial" else ""),
                      flush=True)
    finally:
        server_proc.terminate()
        server_proc.wait(10)
    t = {k: statistics.median(v) for k, v in times.items()}
    m = {k: statistics.median(v) for k, v in rss.items()}
    deployed = max(m["predictor-server"], m["predictor-server-steady"])
    print()
    print(f"data: {version.data}, {version.stores} stores")
    extra = t["predictor"] - t["trivial"]
    print(f"cold start (median of {args.repeat}): predictor {t['predictor']:.2f} s (sqlite), "
          f"{t['predictor-server']:.2f} s (mlflow server) vs trivial KServe model {t['trivial']:.2f} s: "
          f"{extra:+.2f} s (goal <= +2 s) {'OK' if extra <= 2 else 'MISSED'}")
    print(f"resident memory, registry an mlflow server (as deployed): {m['predictor-server']:.0f} MB when ready, "
          f"{m['predictor-server-steady']:.0f} MB after alias refreshes (REST, no MLflow import) (goal <= 300 MB) "
          f"{'OK' if deployed <= 300 else 'MISSED'}")
    print(f"resident memory, embedded sqlite registry: {m['predictor']:.0f} MB when ready, "
          f"{m['predictor-steady']:.0f} MB after alias refreshes (MLflow's client and SQLAlchemy in the process); "
          f"trivial KServe model {m['trivial']:.0f} MB")
    print(f"RESULT | cold start to model-ready, {version.stores} stores | {t['predictor']:.2f} s; RSS "
          f"{deployed:.0f} MB steady (mlflow server), {m['predictor-steady']:.0f} MB (sqlite) | trivial KServe model "
          f"{t['trivial']:.2f} s, {m['trivial']:.0f} MB | {extra:+.2f} s |")


if __name__ == "__main__":
    main()
