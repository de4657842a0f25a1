"""Plotly figures over the views: no Streamlit here, so the CLI and notebooks draw the same figures the app shows."""
