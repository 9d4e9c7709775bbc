"""The one error a HAL function reports: it becomes the `err(string)` of its result, never a trap."""


class HalError(Exception):
    pass
