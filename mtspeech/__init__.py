"""mtspeech: multi-task speech recognition with a shared streaming encoder."""

__version__ = "0.1.0"
