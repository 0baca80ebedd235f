"""ipywidgets + plotly panels: thin views over `labkit.monitor` (they read a source and draw, nothing more).

    from widgets import Dashboard
    Dashboard(labkit.serve("smollm2-135m-instruct"))

For saved notebooks: `static_images()` puts an image beside every plotly figure displayed, and
`Dashboard.snapshot()` turns the live panels into one plain figure.
"""
from .dashboard import Dashboard
from .panels import LatencyPanel, MemoryPanel, Panel, QueuePanel, ThroughputPanel
from .static import static_images

__all__ = ["Dashboard", "LatencyPanel", "MemoryPanel", "Panel", "QueuePanel", "ThroughputPanel", "static_images"]
