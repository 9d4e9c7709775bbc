"""A HAL guest written in Python (componentize-py): it reports what the host's HAL told it."""

from componentize_py_types import Err
from wit_world import WitWorld
from wit_world.imports import clock, crypto, platform, random, storage


class WitWorld(WitWorld):
    def run_hal_test(self) -> str:
        info = platform.get_platform_info()
        digest = crypto.hash(b"abc", crypto.HashAlgorithm.SHA256)
        now = clock.get_system_time()
        noise = random.get_secure_random(8)
        box = storage.create_container("py-box")
        storage.store_object(box, "greeting", b"hello from python")
        back = storage.retrieve_object(box, "greeting")
        try:
            storage.create_container("../escape")
            escape = "allowed"
        except Err as err:
            escape = "refused: " + str(err.value)
        return "|".join(
            [info.platform_type, digest.hex(), str(now.seconds), str(len(noise)), back.decode(), escape]
        )
