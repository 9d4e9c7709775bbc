"""pyserial looks up the handler of scheme X as module `<package>.protocol_X`; see hil.esp32sim."""

from hil.esp32sim import Serial

__all__ = ["Serial"]
