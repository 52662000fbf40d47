"""``python -m predictor``: the storecast predictor as a KServe ModelServer (``serving.server``).

The flags are KServe's ``model_server.parser`` plus :class:`~predictor.settings.PredictorSettings`
(each also a ``STORECAST_*`` variable). The version is loaded in the background: our own flags are
read first, without KServe, and the first version is fetched in a child process while KServe is
imported; the server answers at once, and the model turns ready (``/v2/models/<name>/ready``,
``/v1/models/<name>``) once its version is loaded and checked. The registry is ``MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import sys

from predictor.loader import Loader, configure_logging
from predictor.prefetch import Prefetch
from predictor.settings import COMPONENT, PredictorSettings
from serving.mlflow_env import use_mlflow_defaults
from serving.settings import early_parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    use_mlflow_defaults("serving")  # before the prefetch child and the loader first call MLflow
    early, _ = early_parser(PredictorSettings, COMPONENT.prog).parse_known_args(argv)
    configure_logging()
    loader = None
    if not {"-h", "--help"} & set(argv):
        # Fetch the first version in a child process while this one imports KServe (predictor.prefetch).
        prefetch = Prefetch.start(early.model_uri)
        loader = Loader(early.model_uri, early.shard, early.refresh_seconds, prefetch, early.precompute_days,
                        early.max_days_ahead)
        loader.start()

    from predictor.model import StorecastModel
    from predictor.repository import ReloadingRepository
    from serving.budget import RowBudget
    from serving.server import parse, serve

    settings = parse(COMPONENT, argv)
    assert loader is not None  # --help exited in parse
    model = StorecastModel(settings.kserve["model_name"], loader, max_rows=settings.max_rows,
                           max_days_ahead=settings.max_days_ahead, budget=RowBudget.of(settings))
    # Registered before it is ready: the server is up and answers "not ready" while its version loads.
    serve(COMPONENT, settings, [model], repository=ReloadingRepository())


if __name__ == "__main__":
    main()
