"""HIL fixtures for these tests.

`pytest_plugins` is refused by pytest outside the top-level conftest, so until tests/conftest.py lists
"hil.plugin" the fixtures are imported here; the plugin's command-line options (--hil-map, ...) then
exist only once it is registered there, and fall back to their defaults (virtual boards) until then.
"""

from hil.plugin import board, boards, hil_backends, hil_map

__all__ = ["board", "boards", "hil_backends", "hil_map"]
