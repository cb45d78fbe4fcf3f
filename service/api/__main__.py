"""`python -m revhpo.service.api`: serve the API with the settings from the environment."""

import logging

from revhpo.service.api.server import serve

if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    serve()
