"""The inference service: web app, settings, runtime and the media pipeline."""

import os as _os

# onnxruntime (1.32 on Linux) starts 1DS telemetry DNS lookups ~20 s after a session is created
# unless this is set before the library loads; this service must contact nothing but the URL it
# is asked to fetch, so every package sets it on import (tests/test_offline.py checks the effect).
_os.environ["ORT_DISABLE_TELEMETRY"] = "1"
