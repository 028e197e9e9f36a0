"""The disk budget's decisions: per-client quota, hard cap, LRU eviction, one-line refusals."""

from hypothesis import given, settings
from hypothesis import strategies as st

from pio_remote.agent.quota import BLOCK, Admit, Item, Ledger, Refuse, charged

MIB = 1024 * 1024


def ledger(quota: int = 10 * MIB, cap: int = 25 * MIB) -> Ledger:
    return Ledger(quota=quota, cap=cap, grace=600.0)


def test_charged_counts_whole_blocks_and_the_inode():
    assert charged(0) == BLOCK
    assert charged(1) == 2 * BLOCK
    assert charged(BLOCK) == 2 * BLOCK
    assert charged(BLOCK + 1) == 3 * BLOCK


def test_a_client_over_its_quota_loses_its_own_least_recently_used_items():
    led = ledger()
    for n in range(5):
        led.put(Item(f"project:a/{n}", "a", 2 * MIB, used=1000.0 + n))
    led.put(Item("project:b/0", "b", 2 * MIB, used=0.0))  # older, but someone else's
    plan = led.plan("a", 3 * MIB, now=10_000.0)
    assert plan == Admit((led.items["project:a/0"], led.items["project:a/1"]))


def test_recently_used_items_go_last_but_the_cap_still_holds():
    led = ledger(quota=10 * MIB, cap=10 * MIB)
    led.put(Item("blob:recent", "a", 4 * MIB, used=9_990.0))
    led.put(Item("blob:old", "a", 4 * MIB, used=9_000.0 - 600))
    led.put(Item("blob:older-but-recent", "a", 1 * MIB, used=9_980.0))
    plan = led.plan("a", 6 * MIB, now=10_000.0)
    assert isinstance(plan, Admit)
    assert [i.key for i in plan.evict] == ["blob:old", "blob:older-but-recent"]
    plan = led.plan("a", 9 * MIB, now=10_000.0)
    assert isinstance(plan, Admit) and len(plan.evict) == 3  # recent use does not beat the cap


def test_the_cap_evicts_anyones_items_least_recently_used_first():
    led = ledger(quota=10 * MIB, cap=12 * MIB)
    led.put(Item("blob:b1", "b", 5 * MIB, used=100.0))
    led.put(Item("blob:c1", "c", 5 * MIB, used=50.0))
    plan = led.plan("a", 4 * MIB, now=10_000.0)
    assert plan == Admit((led.items["blob:c1"],))


def test_a_request_bigger_than_the_quota_is_refused_in_one_line_naming_the_key():
    led = ledger()
    led.put(Item("blob:x", "a", 3 * MIB, used=0.0))
    plan = led.plan("a", 11 * MIB, now=1.0, what="project abc")
    assert isinstance(plan, Refuse)
    assert "\n" not in plan.message
    assert plan.message.startswith("quota: project abc needs 11.0 MiB")
    assert "client_disk_quota_bytes" in plan.message and "3.0 MiB" in plan.message


def test_pinned_items_and_reservations_are_never_evicted():
    led = ledger(quota=10 * MIB, cap=10 * MIB)
    led.put(Item("project:a/p", "a", 6 * MIB, used=0.0))
    led.put(Item("put:r", "a", 3 * MIB, used=0.0))
    led.pin("project:a/p")
    plan = led.plan("a", 2 * MIB, now=10_000.0)
    assert isinstance(plan, Refuse) and "in use by calls still running" in plan.message
    led.unpin("project:a/p")
    assert led.plan("a", 2 * MIB, now=10_000.0) == Admit((led.items["project:a/p"],))


def test_a_blob_stays_charged_to_its_first_sender():
    led = ledger()
    led.put(Item("blob:x", "a", MIB, used=0.0))
    led.put(Item("blob:x", "b", MIB, used=5.0))
    assert led.items["blob:x"].owner == "a" and led.usage("b") == 0


owners = st.sampled_from(["a", "b", "c"])
steps = st.lists(
    st.tuples(
        st.sampled_from(["store", "pin", "unpin", "touch"]),
        owners,
        st.integers(0, 12),
        st.integers(0, 6 * MIB),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(2, 10), st.integers(1, 4))
def test_stored_bytes_never_exceed_the_quota_or_the_cap(script, quota_mib, cap_factor):
    """Whatever clients store, pin and use, in any order: every admitted request leaves
    each client within its quota and the agent within its cap; a refusal happens only
    when evicting every unpinned item would still not make room."""
    led = ledger(quota=quota_mib * MIB, cap=quota_mib * cap_factor * MIB)
    now = 0.0
    for op, owner, n, size in script:
        now += 1.0
        key = f"blob:{owner}{n}"
        if op == "store" and key not in led.items:
            plan = led.plan(owner, size, now)
            if isinstance(plan, Admit):
                assert all(not led.pins[i.key] for i in plan.evict)
                led.apply(plan)
                led.put(Item(key, owner, size, now))
            else:
                assert "\n" not in plan.message and plan.message.startswith("quota: ")
                free_own = sum(
                    i.size for i in led.items.values() if i.owner == owner and not led.pins[i.key]
                )
                free_all = sum(i.size for i in led.items.values() if not led.pins[i.key])
                assert (
                    size > led.quota
                    or led.usage(owner) - free_own + size > led.quota
                    or led.total - free_all + size > led.cap
                )
        elif op == "pin" and key in led.items:
            led.pin(key)
        elif op == "unpin" and led.pins[key]:
            led.unpin(key)
        elif op == "touch":
            led.touch(key, now)
        assert led.total <= led.cap
        for o in "abc":
            assert led.usage(o) <= led.quota
