"""A guest that fetches a URL with wasi:http's outgoing handler and says what came back."""

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports import outgoing_handler, types


class WitWorld(WitWorld):
    def fetch(self, url: str) -> str:
        scheme, _, rest = url.partition("://")
        authority, _, path = rest.partition("/")
        request = types.OutgoingRequest(types.Fields())
        request.set_scheme(types.Scheme_Http() if scheme == "http" else types.Scheme_Https())
        request.set_authority(authority)
        request.set_path_with_query("/" + path)
        try:
            future = outgoing_handler.handle(request, None)
        except Err as e:
            return f"refused: {type(e.value).__name__}"
        while True:
            got = future.get()
            if got is not None:
                break
            future.subscribe().block()
        outcome = got.value
        if isinstance(outcome, Err):
            return f"failed: {type(outcome.value).__name__}"
        response = outcome.value
        body = response.consume()
        stream = body.stream()
        data = b""
        while True:
            try:
                data += stream.blocking_read(65536)
            except Err:
                break
        return f"{response.status()} {data.decode(errors='replace')}"
