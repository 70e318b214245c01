"""python -m services.ingestion: the same as `shiftrec serve ingestion`."""

from services.ingestion.server import build_server
from shared.grpc_server import serve
from shared.settings import Settings

if __name__ == "__main__":
    serve(build_server, Settings())
