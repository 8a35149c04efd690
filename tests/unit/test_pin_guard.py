"""The device's PIN lockout (firmware/pin_guard.py): 5 wrong PINs lock for 15 min, doubling."""

from firmware.pin_guard import LOCK_S, PinGuard


def test_the_fifth_wrong_pin_locks_for_fifteen_minutes():
    g = PinGuard()
    assert [g.failed("acme", "bob", t) for t in range(4)] == [0, 0, 0, 0]
    assert g.locked_for("acme", "bob", 4) == 0
    assert g.failed("acme", "bob", 5) == LOCK_S
    assert g.locked_for("acme", "bob", 6) == LOCK_S - 1
    assert g.locked_for("acme", "bob", 5 + LOCK_S) == 0


def test_each_further_lockout_doubles():
    g = PinGuard()
    t, locks = 0.0, []
    for _ in range(3):
        for _ in range(5):
            t += 1
            lock = g.failed("acme", "bob", t)
        locks.append(lock)
        t += lock
    assert locks == [LOCK_S, 2 * LOCK_S, 4 * LOCK_S]


def test_a_right_pin_resets_the_count_and_users_are_apart():
    g = PinGuard()
    for t in range(4):
        g.failed("acme", "bob", t)
    g.succeeded("acme", "bob", 5)
    assert g.failed("acme", "bob", 6) == 0
    for t in range(5):
        g.failed("globex", "bob", 10 + t)
    assert g.locked_for("globex", "bob", 20) > 0 and g.locked_for("acme", "bob", 20) == 0


def test_answers_arriving_while_locked_do_not_extend_it():
    g = PinGuard()
    for t in range(5):
        g.failed("acme", "bob", t)
    assert g.failed("acme", "bob", 10) == LOCK_S - 6


def test_the_table_holds_no_user_id_and_is_bounded():
    g = PinGuard(max_entries=3)
    for i in range(10):
        g.failed("acme", f"user{i}", i)
    assert len(g._table) == 3
    assert not any(b"user" in k or b"acme" in k for k in g._table)
