"""Streamlit helpers shared by the pages: cached resources, rendering, settings widgets."""
