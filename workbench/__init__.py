"""The Streamlit workbench: entry file, frame and shared UI parts (the pages live in ``pages/``).

Run it from the project root:

    streamlit run workbench/app.py

Nothing here is imported by ``core``; ``core`` never imports Streamlit.
"""
