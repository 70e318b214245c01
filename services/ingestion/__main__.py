"""python -m services.ingestion: run the ingestion server with settings from the environment."""

import asyncio

from services.ingestion.server import serve
from shared.logs import configure_logging
from shared.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(serve(settings))
