"""A missed bound fails the test with a message that says what the manager saw, and the cluster is
torn down even so (no broker or manager process left behind)."""

import os

import pytest

from twin.harness import TwinCluster

pytest_plugins = ["pytester"]


async def test_missed_dead_bound_names_the_device_and_the_managers_view(twin_cluster: TwinCluster) -> None:
    c = twin_cluster
    await c.add_devices(kind="host", count=1, prefix="edge-")

    with pytest.raises(AssertionError) as failed:
        await c.wait_dead("edge-1", within=0.3)  # nothing happened to it

    assert str(failed.value) == "edge-1 was not marked dead within 0.3 s (last manager view: alive)"

    # Mistakes in the test itself are named too.
    with pytest.raises(ValueError, match="no device named 'esp-9'"):
        await c.power_loss("esp-9")
    with pytest.raises(ValueError, match="kind must be one of esp32s3, host, upstream-firmware, got 'pi'"):
        await c.add_devices(kind="pi")
    with pytest.raises(ValueError, match=r"module 'nope\.wat': cannot read"):
        await c.submit("nope.wat")


def test_failing_user_test_reports_the_bound_and_cleans_up(pytester: pytest.Pytester) -> None:
    pids = pytester.path / "pids.txt"
    pytester.makepyfile(
        f"""
        async def test_user(twin_cluster):
            c = twin_cluster
            with open({str(pids)!r}, "w") as f:
                f.write(f"{{c.broker.process.pid}} {{c.manager.process.pid}}")
            [esp] = await c.add_devices(kind="host", count=1, prefix="edge-")
            await c.power_loss(esp)
            await c.wait_alive(esp, within=0.5)  # it stays off: this must fail
        """
    )
    report = pytester.path / "report"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
                                           f"--twin-report={report}")

    result.assert_outcomes(failed=1)
    # 0.5 s after a (silent) power loss the manager has not noticed yet: its last view is still alive.
    result.stdout.fnmatch_lines(["*AssertionError: edge-1 was not marked alive again within 0.5 s "
                                 "(last manager view: alive)*"])
    for pid in map(int, pids.read_text().split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # --twin-report wrote the failed test's cluster report and trace, for the CI artefacts.
    assert (report / "test_user" / "test_user.html").read_text().startswith("<!")
    assert "edge-1" in (report / "test_user" / "test_user.trace.jsonl").read_text()
