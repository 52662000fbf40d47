"""``python -m predictor --model_uri models:/storecast@champion --http_port 8080``: see predictor.server."""

from predictor.server import main

if __name__ == "__main__":
    main()
