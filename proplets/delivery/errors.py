"""The one error every delivery path raises."""

from __future__ import annotations

from typing import Literal

DeliverySource = Literal["inline", "http", "oci", "mqtt"]


class DeliveryError(Exception):
    """A wasm binary that could not be obtained, or was obtained but must not run.

    ``source`` names the delivery path (``inline``, ``http``, ``oci``, ``mqtt``) and the message names the
    URL, reference or app and the cause, because it ends up verbatim in the task's error result.
    """

    def __init__(self, source: DeliverySource, message: str) -> None:
        # Both go to Exception so the error pickles (it may cross a thread or process boundary).
        super().__init__(source, message)
        self.source: DeliverySource = source
        self.message = message

    def __str__(self) -> str:
        return self.message


class FetchRefused(DeliveryError):
    """The fetch allow-list (proplets/egress.py) refused a connection; the message names the rule."""
