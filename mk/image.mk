# Container image targets; the Makefile includes this file (`include mk/image.mk`, after its own
# variables). Podman set-up without a Docker engine or registry: ../shared/container/README.md.
# Two images from the one Dockerfile (its stages `serve` and `full`):
#   make image        build both: $(SERVE_IMAGE) (predictor, transformer, dead-letter sink) and
#                     $(IMAGE) (training, retrain service, CLI, MLflow server, and serving too)
#   make image-smoke  build both, check them, run mlflow server + training (full) and predictor +
#                     transformer (serve) in one pod on 127.0.0.1, check a business, a CloudEvent, a
#                     V2 answer and a batch run, print both sizes, clean up (root, a few minutes:
#                     not part of `make test`) - scripts/image_smoke.sh
#   make image-lock   after a dependency change: re-pin docker/constraints.txt and
#                     docker/serve-requirements.txt from the venv (docker/lock.py)
IMAGE ?= localhost/storecast:dev
SERVE_IMAGE ?= localhost/storecast-serve:dev

.PHONY: image image-smoke image-lock

image:
	podman build --target serve -t $(SERVE_IMAGE) .
	podman build --target full -t $(IMAGE) .

image-smoke:
	IMAGE=$(IMAGE) SERVE_IMAGE=$(SERVE_IMAGE) bash scripts/image_smoke.sh

image-lock: install
	$(VENV)/bin/python docker/lock.py
