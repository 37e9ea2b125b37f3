"""docs/images/window-timeline.svg is what scripts/window_timeline.py draws, and the model it draws says what the
docs say: stop-and-wait leaves the server idle about one RTT per window, a sliding window never does.

To refresh the picture after changing the script: ``.venv/bin/python scripts/window_timeline.py``.
"""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def timeline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hve_window_timeline", ROOT / "scripts" / "window_timeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_svg_is_what_the_script_draws(timeline: ModuleType) -> None:
    drawn = timeline.draw()
    assert timeline.OUT.read_text(encoding="utf-8") == drawn, "run .venv/bin/python scripts/window_timeline.py"
    assert ET.fromstring(drawn).tag == "{http://www.w3.org/2000/svg}svg"


def test_stop_and_wait_idles_about_one_rtt_per_window_and_sliding_never(timeline: ModuleType) -> None:
    waited = timeline.stop_and_wait(timeline.WINDOW)
    slid = timeline.sliding(timeline.SLIDING_WINDOW)
    gaps = [end - start for start, end in timeline.idle_spans(waited)]
    assert gaps and all(timeline.RTT_MS * 0.8 <= gap <= timeline.RTT_MS * 1.2 for gap in gaps), gaps
    assert timeline.idle_spans(slid) == []
    assert len(slid) > 1.5 * len(waited)
    # Never more in flight than the window: a transaction goes out only once the reply `window` back is in.
    for model, window in ((waited, timeline.WINDOW), (slid, timeline.SLIDING_WINDOW)):
        for message in model:
            in_flight = sum(1 for other in model if other.written <= message.written < other.back)
            assert in_flight <= window
