"""The analyst's web page at ``/`` (plain HTML, CSS and JS in ``static/``, no build step)."""
