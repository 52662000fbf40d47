# Container image targets; the Makefile includes this file (`include mk/image.mk`, after its own
# variables). Podman set-up without a Docker engine or registry: ../shared/container/README.md.
# Three images from the one Dockerfile (its stages `serve`, `mlserver` and `full`):
#   make image        build all three: $(SERVE_IMAGE) (predictor, transformer, dead-letter sink),
#                     $(MLSERVER_IMAGE) (the storecast MLServer runtime) and $(IMAGE) (training,
#                     retrain service, CLI, MLflow server, and serving too)
#   make image-smoke  build all three, check them, run mlflow server + training (full), predictor +
#                     transformer (serve) and MLServer (mlserver) in one pod on 127.0.0.1, check a
#                     business, a CloudEvent, a V2 answer from both predictors and a batch run, print the
#                     sizes, clean up (root, a few minutes: not part of `make test`) - scripts/image_smoke.sh
#   make image-lock   after a dependency change: re-pin docker/constraints.txt and
#                     docker/serve-requirements.txt from the venv (docker/lock.py); the mlserver image
#                     installs mlserver_runtime/requirements.txt, pinned on its own
IMAGE ?= localhost/storecast:dev
SERVE_IMAGE ?= localhost/storecast-serve:dev
MLSERVER_IMAGE ?= localhost/storecast-mlserver:dev

.PHONY: image image-smoke image-lock

image:
	podman build --target serve -t $(SERVE_IMAGE) .
	podman build --target mlserver -t $(MLSERVER_IMAGE) .
	podman build --target full -t $(IMAGE) .

image-smoke:
	IMAGE=$(IMAGE) SERVE_IMAGE=$(SERVE_IMAGE) MLSERVER_IMAGE=$(MLSERVER_IMAGE) bash scripts/image_smoke.sh

image-lock: install-test
	$(VENV)/bin/python docker/lock.py
