"""`python -m revhpo.service.api`: serve the API with the settings from the environment."""

from revhpo.service.api.server import serve
from revhpo.service.logs import configure_logging

if __name__ == "__main__":
    configure_logging()
    serve()
