"""ipywidgets + plotly panels: thin views over `labkit.monitor` (they read a source and draw, nothing more).

    from widgets import Dashboard
    Dashboard(labkit.serve("smollm2-135m-instruct"))
"""
from .dashboard import Dashboard
from .panels import LatencyPanel, MemoryPanel, Panel, QueuePanel, ThroughputPanel

__all__ = ["Dashboard", "LatencyPanel", "MemoryPanel", "Panel", "QueuePanel", "ThroughputPanel"]
