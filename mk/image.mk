# Container image targets; the Makefile includes this file (`include mk/image.mk`, after its own
# variables). Podman set-up without a Docker engine or registry: ../shared/container/README.md.
#   make image        build the image
#   make image-smoke  build it, train synthetic stores in a container, run predictor + transformer
#                     containers on 127.0.0.1, check a business, a CloudEvent and a V2 answer, clean
#                     up (root, a few minutes: not part of `make test`) - scripts/image_smoke.sh
#   make image-lock   after a dependency change: re-pin docker/constraints.txt from the venv
IMAGE ?= localhost/storecast:dev

.PHONY: image image-smoke image-lock

image:
	podman build -t $(IMAGE) .

image-smoke:
	IMAGE=$(IMAGE) bash scripts/image_smoke.sh

image-lock: install
	$(VENV)/bin/python docker/lock.py > docker/constraints.txt
