"""The OpenWebUI pipe: `pipe.py` and its sibling modules, rendered into one file by `bundle.render_pipe`."""
