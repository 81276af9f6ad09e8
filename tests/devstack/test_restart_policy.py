"""The supervisor's bookkeeping, with a fake clock and children that exit at once."""

from __future__ import annotations

from devstack.processes import ManagedProcess
from devstack.supervisor import RestartPolicy, Supervisor, describe_exit


def test_backoff_doubles_per_recent_crash_up_to_the_cap() -> None:
    policy = RestartPolicy(backoff_s=0.5, backoff_max_s=3)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 3, 3]


def test_exit_descriptions() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"


def test_restarts_after_the_backoff_then_gives_up_at_the_limit() -> None:
    now = [0.0]
    said: list[str] = []
    child = ManagedProcess("crasher", ["-c", "raise SystemExit(3)"]).start()
    policy = RestartPolicy(backoff_s=1, crash_limit=3, crash_window_s=60)
    supervisor = Supervisor([child], policy, say=said.append, clock=lambda: now[0])

    def crash_and_check() -> None:
        child.proc.wait(10)  # type: ignore[union-attr]
        supervisor.check()

    crash_and_check()
    assert "crasher exited with code 3" in said[-1] and "restarting in 1.0 s" in said[-1]
    first_pid = child.pid
    supervisor.check()  # backoff not over: no restart yet
    assert child.pid == first_pid
    assert supervisor.next_wake_s() == 1.0
    now[0] = 1.0
    supervisor.check()
    assert child.pid != first_pid and said[-1].startswith("crasher restarted (pid")
    crash_and_check()
    assert "restarting in 2.0 s" in said[-1]
    now[0] = 3.0
    supervisor.check()
    crash_and_check()
    assert "3 crashes within 60 s, giving up on crasher" in said[-1]
    assert supervisor.all_given_up() and supervisor.given_up == [child]


def test_crashes_outside_the_window_are_forgotten() -> None:
    now = [0.0]
    said: list[str] = []
    child = ManagedProcess("crasher", ["-c", "raise SystemExit(1)"]).start()
    policy = RestartPolicy(backoff_s=1, crash_limit=2, crash_window_s=10)
    supervisor = Supervisor([child], policy, say=said.append, clock=lambda: now[0])
    for _ in range(4):  # one crash every 20 s: never two within the window
        child.proc.wait(10)  # type: ignore[union-attr]
        supervisor.check()
        assert "restarting in 1.0 s (crash 1;" in said[-1]
        now[0] += 20
        supervisor.check()
    assert not supervisor.given_up
    child.stop()
