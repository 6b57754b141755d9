"""The forkserver's last preload: the worker's own main script, then ``gc.freeze()``.

Imported by :class:`~deployments.dispatch.warm.WarmInterpreter`'s forkserver after
everything else in ``PRELOAD``, never by the worker itself. Two costs every forked flow
run would otherwise pay again:

- ``multiprocessing`` re-runs the parent's main script in each child (``.venv/bin/dr``,
  which imports the CLI: about 0.08 s) unless the child's ``__main__`` already is that
  file. Python's forkserver means to import it once when ``"__main__"`` is preloaded, but
  in 3.11 and 3.12 it never receives the path (it filters the key ``main_path``, which
  ``get_preparation_data`` calls ``init_main_from_path``), so the worker passes it in
  ``DR_WARM_MAIN`` and this module imports it the same way.
- The first full garbage collection in a child walks every object the imports created.
  ``gc.freeze()`` moves them to the permanent generation, so children never scan them
  (and their pages stay shared with the forkserver).
"""

from __future__ import annotations

import gc
import os
import sys
from multiprocessing import spawn

from deployments.dispatch.warm import MAIN_PATH_ENV

_main_path = os.environ.get(MAIN_PATH_ENV)
if _main_path and os.path.isfile(_main_path):
    try:
        spawn.import_main_path(_main_path)
    except Exception as exc:  # noqa: BLE001 - each fork then runs it itself, as before
        print(f"warm interpreter: {_main_path} not preloaded: {exc}", file=sys.stderr)
gc.collect()
gc.freeze()
