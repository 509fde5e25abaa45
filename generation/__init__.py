"""The engine: models, the job scheduler and audio processing. Knows nothing of Discord or SQLite.

Importing this package must stay cheap: torch and transformers load only inside the backend modules.
"""

__version__ = "0.1.0"
