"""`python -m mtspeech.ablation --run RUN_DIR [--threads N]`: train + evaluate one planned run."""

import sys

from mtspeech.ablation.cli import _worker_main

sys.exit(_worker_main())
