"""The Streamlit app. The only package of llm-flow that imports Streamlit."""
