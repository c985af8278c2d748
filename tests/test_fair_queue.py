"""Fair share of the GPU: parties served in turn, and one party's flood refused without touching the others."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from test_batch import fast_options
from test_server import FAST, assert_error, outputs

from app.errors import BusyError, TryOnInputError
from app.model.engine import Engine
from app.tryons.fair_queue import FairGate
from app.tryons.outputs import ResultStore
from app.tryons.service import BatchItem, TryOnService
from app.web.server import create_app


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the queue never reached the expected state")
        time.sleep(0.01)


def turns_taken(gate: FairGate, arrivals: list[str]) -> list[str]:
    """The order in which parties arriving in ``arrivals`` order (while the gate is held) take the gate."""
    order, lock = [], threading.Lock()

    def take(party: str) -> None:
        gate.acquire(party)
        with lock:
            order.append(party)
        gate.release()

    gate.acquire("holder")
    threads = []
    for count, party in enumerate(arrivals, 1):
        threads.append(threading.Thread(target=take, args=(party,)))
        threads[-1].start()
        wait_until(lambda count=count: gate.state()["waiting"] == count)
    gate.release()
    for thread in threads:
        thread.join(timeout=30)
    return order


def test_the_party_served_least_recently_goes_next_and_each_party_keeps_its_order():
    arrivals = ["script"] * 5 + ["a", "b", "script", "a"]
    assert turns_taken(FairGate(), arrivals) == ["script", "a", "b", "script", "a", "script", "script", "script",
                                                 "script"]
    assert turns_taken(FairGate(fair=False), arrivals) == arrivals  # first come, first served


def test_a_waiter_that_stops_leaves_the_queue_as_if_it_never_came():
    gate = FairGate()
    gate.acquire("holder")
    stopped = []

    class Stop(BaseException):
        pass

    def waiter():
        try:
            gate.acquire("quitter")
        except Stop:
            stopped.append(True)

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: gate.state()["waiting"] == 1)
    import ctypes  # stop the waiting thread as a KeyboardInterrupt would: an exception raised inside wait()

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(Stop))
    with gate._cond:
        gate._cond.notify_all()
    thread.join(timeout=10)
    assert stopped == [True] and gate.state() == {"waiting": 0, "owners_waiting": 0, "running": True,
                                                  "owners_active": 0}
    gate.release()
    assert turns_taken(gate, ["next"]) == ["next"]  # nothing left behind blocks the next one


def test_reservations_bound_each_party_alone():
    gate = FairGate()
    assert gate.reserve("script", 3, limit=3) is None
    assert gate.reserve("script", 1, limit=3) == 3  # refused: holds 3
    assert gate.reserve("designer", 1, limit=3) is None  # another party is not affected
    gate.unreserve("script", 1)
    assert gate.reserve("script", 1, limit=3) is None and gate.held("script") == 3


@pytest.fixture
def make_service(volume_copy, make_settings):
    engines = []

    def make(**overrides) -> TryOnService:
        settings = make_settings(volume_copy, **overrides)
        engines.append(Engine(settings))
        return TryOnService(settings, engines[-1], ResultStore(settings.layout.outputs, settings.layout.root))

    yield make
    for engine in engines:
        engine.close()


def gpu_turns(service: TryOnService, images, arrivals: list[str]) -> list[str]:
    """Real try-ons on the tiny models, arriving in this order while another runs; the owners in the order
    the GPU served them (each try-on's first denoising step happens on the GPU, in its turn)."""
    order, lock = [], threading.Lock()
    service.engine.get()  # loaded first: the order is the queue's, not the load's

    def run(owner: str) -> None:
        first = []

        def progress(done: int, total: int) -> None:
            if not first:
                first.append(done)
                with lock:
                    order.append(owner)

        service.run(images["person"], images["garment"], images["mask"], fast_options(), owner=owner,
                    progress=progress)

    service._gpu.acquire("user:holder")
    threads = []
    try:
        for count, owner in enumerate(arrivals, 1):
            threads.append(threading.Thread(target=run, args=(owner,)))
            threads[-1].start()
            wait_until(lambda count=count: service.queue_state()["waiting"] == count)
    finally:
        service._gpu.release()
    for thread in threads:
        thread.join(timeout=300)
    return order


@pytest.mark.slow
def test_one_script_with_twenty_try_ons_and_three_designers_take_turns(make_service, images, volume_copy):
    arrivals = ["user:script"] * 20 + ["user:ana", "user:ben", "user:cleo"]
    service = make_service(max_waiting_per_owner=20, queue_max=32)
    order = gpu_turns(service, images, arrivals)
    # Each designer, arriving behind the script's twenty, waits for at most one try-on of the script's.
    assert order[:4] == ["user:script", "user:ana", "user:ben", "user:cleo"], order
    assert sorted(order) == sorted(arrivals)
    assert len([name for name in outputs(volume_copy) if name.endswith(".png")]) == 23


def test_a_batch_takes_the_gpu_item_by_item_in_turn_with_the_others(make_service, images):
    service = make_service(max_waiting_per_owner=12)
    service.engine.get()
    order, lock = [], threading.Lock()

    def note(owner):
        def progress(done, total):  # two steps an item: an odd step is the first of an item, in its turn
            if done % 2 == 1:
                with lock:
                    order.append(owner)
        return progress

    items = [BatchItem(images["person"], images["garment"], images["mask"]) for _ in range(4)]
    service._gpu.acquire("user:holder")
    batch = threading.Thread(target=service.run_batch, args=(items, fast_options()),
                             kwargs={"owner": "user:batch", "progress": note("user:batch")})
    batch.start()
    wait_until(lambda: service.queue_state()["waiting"] == 1)
    single = threading.Thread(target=service.run, args=(images["person"], images["garment"], images["mask"],
                                                        fast_options()),
                              kwargs={"owner": "user:ana", "progress": note("user:ana")})
    single.start()
    wait_until(lambda: service.queue_state()["waiting"] == 2)
    assert service.queue_state()["owners_waiting"] == 2
    service._gpu.release()
    batch.join(timeout=300)
    single.join(timeout=300)
    assert order == ["user:batch", "user:ana", "user:batch", "user:batch", "user:batch"], order


def test_past_its_limit_one_owner_is_refused_and_the_others_are_not(make_service, images):
    service = make_service(max_waiting_per_owner=2)
    service._gpu.acquire("user:holder")
    results, errors = [], []

    def run(owner):
        try:
            results.append(service.run(images["person"], images["garment"], images["mask"], fast_options(),
                                       owner=owner))
        except BusyError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("user:script",)) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: service.queue_state()["waiting"] == 2)
        with pytest.raises(BusyError, match=r"you already have 2 try-ons waiting or running \(at most 2 per caller\)"):
            service.run(images["person"], images["garment"], images["mask"], fast_options(), owner="user:script")
        items = [BatchItem(images["person"], images["garment"], images["mask"]) for _ in range(3)]
        with pytest.raises(TryOnInputError, match="this batch has 3 try-ons, over the 2 one caller may have"):
            service.run_batch(items, fast_options(), owner="user:other")
        threads.append(threading.Thread(target=run, args=("user:ana",)))
        threads[-1].start()
        wait_until(lambda: service.queue_state()["waiting"] == 3)
    finally:
        service._gpu.release()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == [] and len(results) == 3
    assert service.queue_state()["owners_active"] == 0  # every reservation given back


def test_rest_callers_get_429_for_their_own_flood_while_others_are_served(volume_copy, make_settings, images):
    (volume_copy / "inputs").mkdir()
    for role, image in images.items():
        image.save(volume_copy / "inputs" / f"{role}.png")
    settings = make_settings(volume_copy, max_waiting_per_owner=2, queue_max=8,
                             api_keys="script:key-script,ana:key-ana")
    app = create_app(settings, ui=False)
    service = app.state.service
    body = {"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", **FAST}
    answers = []
    with TestClient(app, client=("203.0.113.5", 50000)) as client:
        def post(key: str | None) -> None:
            headers = {"X-API-Key": key} if key else {}
            answers.append((key, client.post("/v1/tryon", json=body, headers=headers)))

        service._gpu.acquire("user:holder")
        threads = []
        try:
            for key in ("key-script", "key-script", None, None):
                threads.append(threading.Thread(target=post, args=(key,)))
                threads[-1].start()
                started = len(threads)
                wait_until(lambda started=started: service.queue_state()["waiting"] == started)
            refused = client.post("/v1/tryon", json=body, headers={"X-API-Key": "key-script"})
            assert_error(refused, 429, "busy", "you already have 2 try-ons waiting or running (at most 2 per caller)")
            assert int(refused.headers["retry-after"]) >= 1
            # Anonymous calls get a new owner each, but count as one caller: their address.
            assert_error(client.post("/v1/tryon", json=body), 429, "busy", "you already have 2")
            served = threading.Thread(target=post, args=("key-ana",))
            served.start()
            wait_until(lambda: service.queue_state()["waiting"] == 5)
            assert service.queue_state()["owners_waiting"] == 3
        finally:
            service._gpu.release()
        for thread in [*threads, served]:
            thread.join(timeout=300)
    assert sorted(response.status_code for _key, response in answers) == [200] * 5
    assert len([name for name in outputs(volume_copy) if name.endswith(".png")]) == 5


def test_the_studio_says_how_many_try_ons_run_before_yours(make_service, images):
    from app.studio.runs import StepClock, describe

    service = make_service()
    service.engine.get()
    service._gpu.acquire("user:holder")
    threads = []
    try:
        for count, owner in enumerate(["user:script"] * 3 + ["user:ana", "user:ben"], 1):
            threads.append(threading.Thread(target=service.run, args=(images["person"], images["garment"],
                                                                      images["mask"], fast_options()),
                                            kwargs={"owner": owner}))
            threads[-1].start()
            wait_until(lambda count=count: service.queue_state()["waiting"] == count)
        lines = {owner: describe(service, 0, 2, StepClock(), time.perf_counter(), 1, owner)
                 for owner in ("user:script", "user:ana", "user:ben", "user:cleo")}
    finally:
        service._gpu.release()
    for thread in threads:
        thread.join(timeout=300)
    # The one running, then one try-on per caller ahead in turn: not the script's whole queue.
    assert lines["user:script"].startswith("Waiting for the GPU: 1 try-on before yours")
    assert lines["user:ana"].startswith("Waiting for the GPU: 2 try-ons before yours")
    assert lines["user:ben"].startswith("Waiting for the GPU: 3 try-ons before yours")
    assert lines["user:cleo"].startswith("Starting")  # nothing of theirs waits


def test_new_parties_cannot_jump_ahead_of_callers_already_waiting():
    gate = FairGate()
    gate.acquire("script")  # running: turn 1
    order, lock = [], threading.Lock()

    def take(party):
        gate.acquire(party)
        with lock:
            order.append(party)
        gate.release()

    threads = [threading.Thread(target=take, args=("designer",))]
    threads[0].start()
    wait_until(lambda: gate.state()["waiting"] == 1)
    gate.release()  # the designer's turn (2); the script takes the GPU back (3) as the flood arrives
    wait_until(lambda: order == ["designer"])
    gate.acquire("script")
    threads.append(threading.Thread(target=take, args=("designer",)))
    threads[-1].start()
    wait_until(lambda: gate.state()["waiting"] == 1)
    for number in range(5):  # a caller changing addresses: five parties never seen
        threads.append(threading.Thread(target=take, args=(f"fresh-{number}",)))
        threads[-1].start()
        wait_until(lambda number=number: gate.state()["waiting"] == number + 2)
    gate.release()
    for thread in threads:
        thread.join(timeout=30)
    assert order[:2] == ["designer", "designer"], order  # served before every newcomer that came after it


def test_the_callers_address_is_the_one_our_proxies_saw_and_loopback_counts_by_cookie():
    from app.identity.access import party_of, usable_address
    from app.web.guard import client_address

    scope = {"client": ("10.0.0.9", 4000)}  # the proxy's connection
    spoofed = {"x-forwarded-for": "198.51.100.66, 203.0.113.7"}  # the client wrote the first, our proxy the last
    assert client_address(scope, spoofed, 0) == "10.0.0.9"
    assert client_address(scope, spoofed, 1) == "203.0.113.7"
    assert client_address(scope, spoofed, 2) == "198.51.100.66"
    assert client_address(scope, {"x-forwarded-for": "203.0.113.7"}, 2) == "10.0.0.9"  # came past a proxy
    assert party_of("visitor:abc", "203.0.113.7") == "addr:203.0.113.7"
    assert party_of("user:ana", "203.0.113.7") == "user:ana"
    # --share's tunnel and a local proxy arrive from loopback: the visitor's cookie tells callers apart there.
    assert party_of("visitor:abc", "127.0.0.1") == "visitor:abc" and party_of("visitor:abc", None) == "visitor:abc"
    assert party_of("visitor:abc", "::1") == "visitor:abc" and usable_address("testclient") is None
    # One IPv6 host holds a whole /64: it is one caller.
    assert party_of("anon:1", "2001:db8::1") == party_of("anon:2", "2001:db8::2") == "addr:2001:db8::/64"
    assert usable_address("::ffff:203.0.113.7") == "203.0.113.7"


def test_when_the_queue_is_full_a_newcomer_still_gets_in_but_not_the_callers_already_there(make_service, images):
    service = make_service(queue_max=1, max_waiting_per_owner=4)
    service.engine.get()
    service._gpu.acquire("user:holder")
    threads = []

    def run(owner):
        threads.append(threading.Thread(target=service.run, args=(images["person"], images["garment"],
                                                                  images["mask"], fast_options()),
                                        kwargs={"owner": owner}))
        threads[-1].start()

    try:
        run("user:script")
        wait_until(lambda: service.queue_state()["waiting"] == 1)  # the queue of one is full
        with pytest.raises(BusyError, match=r"1 try-ons are already waiting \(limit 1\), 1 of them yours"):
            service.run(images["person"], images["garment"], images["mask"], fast_options(), owner="user:script")
        run("user:ana")  # a newcomer gets in, up to twice the limit
        wait_until(lambda: service.queue_state()["waiting"] == 2)
        with pytest.raises(BusyError, match=r"2 try-ons are already waiting \(limit 1\), 0 of them yours"):
            service.run(images["person"], images["garment"], images["mask"], fast_options(), owner="user:ben")
    finally:
        service._gpu.release()
    for thread in threads:
        thread.join(timeout=300)
    assert service.queue_state()["owners_active"] == 0
