"""The mtspeech inference server (FastAPI)."""
