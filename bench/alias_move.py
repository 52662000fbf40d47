"""What a compare-and-set alias move costs against a plain one, on a real ``mlflow server``.

    python bench/alias_move.py [--moves 30] [--rounds 3]

Every version lands through ``Registry.move_alias`` (``pipelines.versions.landing.land``): take the alias's
lock (a registered model only one writer can create), check the alias, set it, release the lock.
The baseline is MLflow's own ``set_registered_model_alias`` on the same server in the same run. The
versions are registered without artifacts (``create_model_version`` with a placeholder ``s3://``
source, never read): only the registry calls are timed. Prints the load average beside every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.stack import Service, free_port, wait_ready
from pipelines.versions.registry import Registry

NAME = "bench-alias"


def _median_ms(fn, moves: int) -> float:
    times = []
    for i in range(moves):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--moves", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        log = Path(tmp) / "mlflow.log"
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db"],
            stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=tmp)
        uri = f"http://127.0.0.1:{port}"
        try:
            wait_ready(f"{uri}/health", Service("mlflow", proc, port, log=log), timeout=300)
            registry = Registry(uri, NAME)
            client = registry.client
            client.create_registered_model(NAME)
            versions = [client.create_model_version(NAME, source=f"s3://bench/v{i}").version for i in range(2)]
            for r in range(args.rounds):
                client.set_registered_model_alias(NAME, "champion", versions[0])
                plain = _median_ms(lambda i: client.set_registered_model_alias(NAME, "champion", versions[i % 2]),
                                   args.moves)
                client.set_registered_model_alias(NAME, "champion", versions[0])
                cas = _median_ms(lambda i: registry.move_alias("champion", versions[(i + 1) % 2], versions[i % 2]),
                                 args.moves)
                load = "/".join(f"{x:.2f}" for x in os.getloadavg())
                print(f"round {r + 1}: plain alias move {plain:.1f} ms, compare-and-set {cas:.1f} ms "
                      f"({cas / plain:.1f}x), load average {load}")
            print(f"RESULT | alias move, compare-and-set (median of {args.moves}) | {cas:.1f} ms | {plain:.1f} ms "
                  f"(plain set alias) | {cas / plain:.1f}x (load {load}) |")
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
