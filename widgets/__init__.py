"""ipywidgets + plotly panels: thin views over labkit.monitor (they arrive with the monitor issue)."""
