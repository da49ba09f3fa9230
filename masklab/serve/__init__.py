"""masklab.serve: the web service and page (``masklab serve``). Needs ``pip install masklab[serve]``."""

from masklab.serve.app import create_app
from masklab.serve.settings import ServeSettings

__all__ = ["create_app", "ServeSettings"]
