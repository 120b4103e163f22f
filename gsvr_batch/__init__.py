"""gsvr-batch: turn many videos into lesson plans with Google Gemini, unattended and resumable."""

__version__ = "0.1.0"
