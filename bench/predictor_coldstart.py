"""Cold start: process start to model-ready, predictor (1,115 stores) vs a trivial KServe model.

    python bench/predictor_coldstart.py [--workdir build/bench] [--repeat 3]

Both servers are started the same way (same ModelServer flags, loopback ports), alternately, and
timed until ``/v2/models/storecast/ready`` answers 200; the predictor loads its version from the
MLflow registry (``models:/storecast@champion``, sqlite store). Then the resident memory of each is
read after a few requests, and the predictor's again once it has re-resolved its alias in-process.
Goals: predictor <= trivial + 2 s; predictor RSS <= 300 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request

from predictor_common import PREDICTOR, TRIVIAL, add_common_arguments, prepare_version, start


def _touch(url: str) -> None:
    body = {"inputs": [{"name": "store_id", "shape": [7], "datatype": "BYTES", "data": ["1"] * 7},
                       {"name": "ds", "shape": [7], "datatype": "BYTES",
                        "data": [f"2015-08-0{d}" for d in range(1, 8)]}]}
    req = urllib.request.Request(f"{url}/v2/models/storecast/infer", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    for _ in range(20):
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()


def main() -> None:
    parser = add_common_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    version = prepare_version(args)
    env = {"MLFLOW_TRACKING_URI": version.tracking_uri}
    times: dict[str, list[float]] = {"trivial": [], "predictor": []}
    rss: dict[str, list[float]] = {"trivial": [], "predictor": [], "predictor-steady": []}
    # the predictor re-resolves its alias after 2 s: MLflow is then imported in the server process too
    commands = {"trivial": (TRIVIAL, []), "predictor": (PREDICTOR, ["--refresh-seconds", "2"])}
    for i in range(args.repeat):
        for name, (command, extra) in commands.items():
            server = start(command, version.workdir / f"coldstart-{name}.log", env, extra)
            try:
                times[name].append(server.wait_ready())
                _touch(server.url)
                rss[name].append(server.rss_mb())
                if name == "predictor":
                    time.sleep(6)
                    _touch(server.url)
                    rss["predictor-steady"].append(server.rss_mb())
            finally:
                server.stop()
            print(f"run {i + 1}: {name:9s} ready in {times[name][-1]:.2f} s, RSS {rss[name][-1]:.0f} MB", flush=True)
    t_triv, t_pred = statistics.median(times["trivial"]), statistics.median(times["predictor"])
    m = {k: statistics.median(v) for k, v in rss.items()}
    print()
    print(f"data: {version.data}, {version.stores} stores, registry {version.tracking_uri.split(':')[0]}")
    print(f"cold start (median of {args.repeat}): predictor {t_pred:.2f} s vs trivial KServe model {t_triv:.2f} s: "
          f"+{t_pred - t_triv:.2f} s (goal <= +2 s) {'OK' if t_pred - t_triv <= 2 else 'MISSED'}")
    print(f"resident memory: predictor {m['predictor']:.0f} MB when ready, {m['predictor-steady']:.0f} MB once it "
          f"has re-resolved its alias in-process (MLflow imported); trivial {m['trivial']:.0f} MB "
          f"(goal <= 300 MB) {'OK' if max(m['predictor'], m['predictor-steady']) <= 300 else 'MISSED'}")
    print(f"RESULT | cold start to model-ready, {version.stores} stores | {t_pred:.2f} s, RSS {m['predictor']:.0f} MB "
          f"({m['predictor-steady']:.0f} MB steady) | trivial KServe model {t_triv:.2f} s | +{t_pred - t_triv:.2f} s |")


if __name__ == "__main__":
    main()
