"""What the app does once for its server process."""

from __future__ import annotations

import gc

import transformers

from tests.app_helpers import start


def test_the_imported_libraries_are_out_of_the_collectors_way(tiny_config, monkeypatch):
    """After the first run, module-level objects (here transformers' own namespace) sit in the
    permanent generation: full collections, while serving and when the server stops, skip them."""
    app = start(tiny_config, monkeypatch)
    assert not app.exception
    assert gc.get_freeze_count() > 100_000
    tracked = {id(o) for o in gc.get_objects()}
    assert id(vars(transformers)) not in tracked and id(vars(gc)) not in tracked
