"""The ELASTIC HAL (`elastic:hal@0.1.0`, hal.wit) as host imports for components.

`options` and `tee` hold no wasmtime; `host` links the interfaces into a component Linker.
"""
