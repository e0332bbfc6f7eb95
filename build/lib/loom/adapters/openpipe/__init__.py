"""OpenPipe: an async REST client (report, datasets), the run reporter, and thread → dataset entries."""
