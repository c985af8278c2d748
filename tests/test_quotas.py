"""Quotas (TRYON_QUOTA) and login limits (TRYON_LOGIN_LIMIT): rules, the counter shared by workers, the doors."""

from __future__ import annotations

import base64
import errno
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import SettingError, Settings
from app.errors import CounterUnavailable, GenerationCancelled
from app.tryons.quotas import (
    Counter,
    LoginLimit,
    QuotaExceeded,
    TryOnQuota,
    kind_of,
    parse_login_limit,
    parse_quota,
    parse_rule,
    wait_text,
)
from app.web.server import create_app

ROOT = Path(__file__).resolve().parents[1]
FAST = {"steps": 1, "width": 64, "height": 96}
HOUR = 3600
START = 1_790_000_000 // HOUR * HOUR  # the start of a clock hour


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def base_volume(tmp_path_factory, tiny_volume, images):
    volume = tmp_path_factory.mktemp("quotas") / "volume"
    shutil.copytree(tiny_volume, volume)
    (volume / "inputs").mkdir()
    for role, image in images.items():
        image.save(volume / "inputs" / f"{role}.png")
    return volume


@pytest.fixture
def volume(base_volume, tmp_path):
    """A volume of this test's own: counts and results start from nothing."""
    target = tmp_path / "volume"
    shutil.copytree(base_volume, target)
    return target


def settings_for(volume, **overrides) -> Settings:
    return Settings.from_env({}, volume=str(volume), device="cpu", **overrides)


def tryon(client, headers: dict | None = None, **body):
    request = {"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", **FAST,
               **body}
    return client.post("/v1/tryon", json=request, headers=headers or {})


def results(volume) -> list:
    folder = volume / "outputs"
    return sorted(folder.rglob("*.png")) if folder.exists() else []


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# -- rules --------------------------------------------------------------------------------------

def test_rules_are_parsed_with_sentences_that_name_the_fix():
    everyone = parse_quota("30/h")
    assert set(everyone) == {"visitor", "user", "key"} and everyone["user"].count == 30
    assert everyone["visitor"].seconds == HOUR and everyone["visitor"].this == "this hour"
    per_kind = parse_quota("visitor=10/h, user=50/2h ,key=500/d")
    assert (per_kind["visitor"].count, per_kind["user"].seconds, per_kind["key"].seconds) == (10, 7200, 86400)
    assert per_kind["key"].this == "today (UTC)" and per_kind["user"].per == "per 2 hours"
    assert set(parse_quota("visitor=5/15m")) == {"visitor"}  # a kind left out has no quota
    assert parse_quota("") == {} and parse_quota("off") == {} and parse_login_limit("off") is None
    limit = parse_login_limit("10/15m")
    assert (limit.count, limit.seconds, limit.per, limit.this) == (10, 900, "per 15 minutes",
                                                                   "in this 15-minute period")
    for raw, fragment in (("visitor=10/hour", "not a limit: write N/UNIT"), ("30", "not a limit"),
                          ("guest=1/h", "does not name a kind"), ("visitor=1/h,visitor=2/h", "given twice"),
                          ("0/h", "use 1 to 10000"), ("5/40d", "from 1m to 31d")):
        with pytest.raises(SettingError, match=fragment) as info:
            parse_quota(raw)
        assert str(info.value).startswith("TRYON_QUOTA: ")
    with pytest.raises(SettingError, match="TRYON_LOGIN_LIMIT: .* e.g. 10/15m"):
        parse_rule("ten", "TRYON_LOGIN_LIMIT", "10/15m")
    assert (kind_of("visitor:x"), kind_of("anon:y"), kind_of("user:a", "basic"), kind_of("user:a", "api-key")) == (
        "visitor", "visitor", "user", "key")
    assert (wait_text(40), wait_text(840), wait_text(11400)) == ("40 s", "14 min", "3 h 10 min")


def test_a_bad_setting_fails_the_start_and_empty_means_none(volume):
    with pytest.raises(SettingError, match="TRYON_QUOTA"):
        create_app(settings_for(volume, quota="visitor=lots"), ui=False)
    with pytest.raises(SettingError, match="TRYON_LOGIN_LIMIT"):
        create_app(settings_for(volume, login_limit="10 per minute"), ui=False)
    settings = Settings.from_env({"TRYON_QUOTA": "", "TRYON_LOGIN_LIMIT": "off"}, volume=str(volume))
    assert parse_quota(settings.quota) == {} and parse_login_limit(settings.login_limit) is None


# -- the counter ---------------------------------------------------------------------------------

def _charge_units(folder, start, units: int, tries: int, queue):
    counter = Counter(folder, b"s" * 32, "tryons")
    rule = parse_rule("20/h", "TEST", "")
    while time.time() < start:  # every worker charges at the same moment
        pass
    queue.put([counter.take("visitor\0addr:1.2.3.4", rule, units, START + 10) is not None for _ in range(tries)])


@pytest.mark.parametrize("units", [1, 3])
@pytest.mark.slow
def test_workers_charging_at_once_never_pass_the_limit(tmp_path, units):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.time() + 3  # spawned interpreters need a moment to start
    workers = [context.Process(target=_charge_units, args=(tmp_path, start, units, 12, queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    outcomes = [ok for _ in workers for ok in queue.get(timeout=60)]
    for worker in workers:
        worker.join()
    slots = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(slots) == units * sum(outcomes)  # all or nothing: no batch half-charged
    if units == 1:
        assert sum(outcomes) == 20  # exactly the limit passed, across four processes
    else:
        assert 20 - 2 * units < units * sum(outcomes) <= 20
    # Names on disk say nothing about whom they count.
    assert all("1.2.3.4" not in str(p) and "visitor" not in p.parent.name for p in slots)


def test_windows_roll_over_on_the_clock_and_ended_ones_are_removed(tmp_path):
    clock = Clock(START + HOUR - 840)  # 14 minutes before the hour ends
    quota = TryOnQuota(parse_quota("2/h"), Counter(tmp_path, b"s" * 32, "tryons"), clock)
    for _ in range(2):
        with quota.charged("addr:a", "visitor", 1):
            pass
    with pytest.raises(QuotaExceeded) as info:
        with quota.charged("addr:a", "visitor", 1):
            pass
    assert info.value.retry_after == 840
    assert str(info.value) == "quota: 2 try-ons per hour; 2 used this hour; try again in 14 min."
    with quota.charged("addr:b", "visitor", 1):  # another party is not affected
        pass
    assert quota.usage("addr:a", "visitor").line == "2 of 2 try-ons this hour"
    ended = tmp_path / f"tryons-{HOUR}-{START}"
    assert ended.is_dir()
    clock.now = START + 2 * HOUR + 120  # a later hour
    assert quota.usage("addr:a", "visitor").used == 0
    with quota.charged("addr:a", "visitor", 2):
        pass
    deadline = time.time() + 10
    while ended.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert not ended.exists()  # the ended hour was cleaned up by the next charge


def test_what_did_not_run_is_given_back(tmp_path):
    quota = TryOnQuota(parse_quota("visitor=5/h"), Counter(tmp_path, b"s" * 32, "tryons"), Clock(START))
    with pytest.raises(RuntimeError):
        with quota.charged("addr:a", "visitor", 2):
            raise RuntimeError("the model failed to load")
    assert quota.usage("addr:a", "visitor").used == 0  # a failure on our side costs nothing
    stopped = GenerationCancelled("stopped at step 3 of 50")
    stopped.finished = ["first result"]
    with pytest.raises(GenerationCancelled):
        with quota.charged("addr:a", "visitor", 4):
            raise stopped
    assert quota.usage("addr:a", "visitor").used == 2  # the finished one and the one stopped on the GPU
    with pytest.raises(QuotaExceeded, match="this batch of 4 does not fit: send 3 or fewer"):
        with quota.charged("addr:a", "visitor", 4):
            pass
    with pytest.raises(QuotaExceeded, match="a batch of 6 try-ons is over the quota of 5 try-ons per hour for "
                       "visitors: split it"):
        with quota.charged("addr:a", "visitor", 6):
            pass
    with quota.charged("addr:a", "user", 50):  # no rule for users: no quota
        pass


def test_a_failed_batch_keeps_only_what_it_saved(tmp_path):
    quota = TryOnQuota(parse_quota("visitor=5/h"), Counter(tmp_path, b"s" * 32, "tryons"), Clock(START))
    with pytest.raises(RuntimeError):
        with quota.charged("addr:a", "visitor", 4) as charge:
            charge.ran()  # the first item was saved, then the second failed on our side
            raise RuntimeError("the GPU fell over")
    assert quota.usage("addr:a", "visitor").used == 1
    with pytest.raises(GenerationCancelled):
        with quota.charged("addr:a", "visitor", 3) as charge:
            charge.ran(2)
            raise GenerationCancelled("stopped")  # no finished list: the charge says two were saved
    assert quota.usage("addr:a", "visitor").used == 4  # two saved and the one stopped on the GPU


def _unwritable(code: int):
    def slots(folder):
        raise OSError(code, os.strerror(code), str(folder))
    return slots


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM])
def test_an_unwritable_volume_counts_in_this_process_with_one_warning(tmp_path, caplog, monkeypatch, code):
    counter = Counter(tmp_path, b"s" * 32, "tryons")
    monkeypatch.setattr(counter, "_slots", _unwritable(code))
    quota = TryOnQuota(parse_quota("2/h"), counter, Clock(START))
    for _ in range(2):
        with quota.charged("addr:a", "visitor", 1):
            pass
    with pytest.raises(QuotaExceeded):
        with quota.charged("addr:a", "visitor", 1):
            pass
    assert caplog.text.count("counting in this process only") == 1 and counter.folder is None


@pytest.mark.parametrize("code", [errno.EIO, errno.EMFILE, errno.ESTALE])
def test_other_errors_refuse_the_request_and_keep_the_files(tmp_path, caplog, monkeypatch, code):
    counter = Counter(tmp_path, b"s" * 32, "tryons")
    quota = TryOnQuota(parse_quota("2/h"), counter, Clock(START))
    with quota.charged("addr:a", "visitor", 1):
        pass
    with monkeypatch.context() as patch:
        patch.setattr(counter, "_slots", _unwritable(code))
        sentence = rf"cannot count try-ons on the volume just now \({errno.errorcode[code]}\)"
        with pytest.raises(CounterUnavailable, match=sentence):
            with quota.charged("addr:a", "visitor", 1):
                pass
        with pytest.raises(CounterUnavailable):
            quota.usage("addr:a", "visitor")
    assert counter.folder == tmp_path and "counting in this process only" not in caplog.text
    assert quota.usage("addr:a", "visitor").used == 1  # not counted from zero: the files are used again
    with quota.charged("addr:a", "visitor", 1):
        pass
    with pytest.raises(QuotaExceeded):
        with quota.charged("addr:a", "visitor", 1):
            pass


def test_a_failed_claim_or_rollback_leaves_no_slot_behind(tmp_path, monkeypatch, caplog):
    counter = Counter(tmp_path, b"s" * 32, "tryons")
    rule = parse_rule("5/h", "TEST", "")
    real_claim = Counter._claim

    def broken_claim(path):  # slot 0 is made, then the volume fails
        if path.name == "0":
            return real_claim(path)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(counter, "_claim", broken_claim)
    with pytest.raises(CounterUnavailable):
        counter.take("a", rule, 3, START)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # slot 0 was given back

    def raced_claim(path):  # slots 0 and 1 are ours, the others were taken meanwhile
        return real_claim(path) if path.name in ("0", "1") else False

    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if Path(path).name == "0":
            raise OSError(errno.EIO, "Input/output error")
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(counter, "_claim", raced_claim)
    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(CounterUnavailable):
        counter.take("a", rule, 3, START)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["0"]  # slot 1 was still given back
    assert "cannot give back quota slot" in caplog.text and counter.folder == tmp_path


# -- try-ons through the server ------------------------------------------------------------------

def test_rest_over_quota_is_429_with_retry_after_and_nothing_saved(volume):
    settings = settings_for(volume, quota="visitor=3/h")
    with TestClient(create_app(settings, ui=False), client=("203.0.113.5", 5000)) as client:  # by address
        assert client.get("/v1/quota").json() == {"quota": {
            "kind": "visitor", "limit": 3, "period": "3/h", "period_s": 3600, "used": 0, "left": 3,
            "resets_in_s": client.get("/v1/quota").json()["quota"]["resets_in_s"]}}
        assert tryon(client, seeds=[1, 2]).status_code == 200  # a batch counts its try-ons
        assert tryon(client, mask="inputs/person.png", garment_type="sideways").status_code == 400
        assert client.get("/v1/quota").json()["quota"]["used"] == 2  # a refused request costs nothing
        made = results(volume)
        whole = tryon(client, seeds=[3, 4])
        assert whole.status_code == 429 and whole.json()["error"]["code"] == "quota_exceeded"
        assert "this batch of 2 does not fit: send 1 or fewer" in whole.json()["error"]["message"]
        assert results(volume) == made  # refused whole: nothing generated
        assert tryon(client).status_code == 200
        over = tryon(client)
        assert over.status_code == 429 and set(over.json()) == {"error"}
        retry = int(over.headers["retry-after"])
        assert 1 <= retry <= HOUR
        assert over.json()["error"]["message"].startswith("quota: 3 try-ons per hour for visitors; 3 used this hour;"
                                                          " try again in ")
        assert len(results(volume)) == len(made) + 1
        with TestClient(create_app(settings, ui=False), client=("10.9.8.7", 5000)) as elsewhere:
            assert tryon(elsewhere).status_code == 200  # another address is another visitor
        status = client.get("/v1/quota").json()["quota"]
        assert (status["used"], status["left"]) == (3, 0) and abs(status["resets_in_s"] - retry) <= 2


def test_a_batch_that_fails_part_way_keeps_only_the_items_it_saved(volume, monkeypatch):
    with TestClient(create_app(settings_for(volume, quota="visitor=5/h"), ui=False),
                    raise_server_exceptions=False, client=("10.2.3.4", 5000)) as client:
        service = client.app.state.service
        real, calls = service._generate, []

        def flaky(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("the GPU fell over")
            return real(*args, **kwargs)

        monkeypatch.setattr(service, "_generate", flaky)
        assert tryon(client, seeds=[1, 2, 3]).status_code == 500
        assert len(results(volume)) == 1
        assert client.get("/v1/quota").json()["quota"]["used"] == 1  # the saved one counts, the other two not


def test_counts_that_cannot_be_read_answer_503_with_a_sentence(volume, monkeypatch):
    settings = settings_for(volume, quota="visitor=3/h", auth="", login_limit="3/15m")
    with TestClient(create_app(settings, ui=False), client=("10.2.3.4", 5000)) as client:
        counter = client.app.state.service.quotas.counter
        with monkeypatch.context() as patch:
            patch.setattr(counter, "_slots", _unwritable(errno.EIO))
            refused = tryon(client)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "quota_unavailable"
            assert refused.json()["error"]["message"] == ("cannot count try-ons on the volume just now (EIO); try "
                                                          "again in a moment.")
        assert results(volume) == []
        assert tryon(client).status_code == 200
        assert client.get("/v1/quota").json()["quota"]["used"] == 1
    settings = settings_for(volume, auth="alice:wonder", login_limit="3/15m")
    with TestClient(create_app(settings, ui=False), follow_redirects=False) as client:
        with monkeypatch.context() as patch:
            patch.setattr(client.app.state.access.logins.counter, "_slots", _unwritable(errno.EMFILE))
            for password in ("wonder", "guess"):
                basic_refused = client.get("/v1/status", headers=basic("alice", password))
                assert basic_refused.status_code == 503
                assert basic_refused.json()["error"]["message"].startswith("cannot count failed sign-ins")
            page = client.post("/login", data={"username": "alice", "password": "wonder", "next": "/"})
            assert page.status_code == 503 and "Cannot count failed sign-ins" in page.text
            script = client.post("/login", data={"username": "alice", "password": "wonder"})
            assert script.status_code == 503 and script.json()["error"]["code"] == "quota_unavailable"
        assert client.get("/v1/status", headers=basic("alice", "wonder")).status_code == 200


def test_a_second_worker_on_the_volume_sees_the_first_ones_count(volume):
    settings = settings_for(volume, quota="user=2/h", auth="alice:wonder", api_keys="ci:ck-1")
    with TestClient(create_app(settings, ui=False)) as first, TestClient(create_app(settings, ui=False)) as second:
        alice = basic("alice", "wonder")
        assert tryon(first, alice).status_code == 200
        assert second.get("/v1/quota", headers=alice).json()["quota"]["used"] == 1
        assert tryon(second, alice).status_code == 200
        assert tryon(first, alice).status_code == 429
        key = {"X-API-Key": "ck-1"}
        assert second.get("/v1/quota", headers=key).json() == {"quota": None}  # no rule for keys
        assert tryon(first, key).status_code == 200


@pytest.mark.slow
def test_the_studio_status_line_shows_the_owners_use(volume):
    from app.studio.page import status_text

    with TestClient(create_app(settings_for(volume, quota="30/h"), ui=False), client=("203.0.113.5", 5000)) as client:
        service = client.app.state.service
        party = "addr:203.0.113.5"  # as the guard sets it for a studio visitor at this address
        assert "0 of 30 try-ons this hour" in status_text(service, "visitor:0123", party)
        assert tryon(client, seeds=[1, 2]).status_code == 200  # the same address: the same party
        assert "**2 of 30 try-ons this hour**" in status_text(service, "visitor:0123", party)
        assert "try-ons this" not in status_text(service)
    with TestClient(create_app(settings_for(volume), ui=False)) as client:
        assert "try-ons this" not in status_text(client.app.state.service, "visitor:0123")  # no quota


# -- login limits ---------------------------------------------------------------------------------

def test_failed_sign_ins_are_limited_per_address_and_per_account_from_it(volume):
    settings = settings_for(volume, auth="alice:wonder,bob:builder", api_keys="ci:ck-1", login_limit="3/15m",
                            trust_proxy=1)
    clock = Clock(START + 60)
    with TestClient(create_app(settings, ui=False)) as client:
        client.app.state.access.logins.clock = clock

        def status(user, password, address):
            return client.get("/v1/status", headers={**basic(user, password), "X-Forwarded-For": address})

        # Wrong passwords for alice from elsewhere do not lock her out.
        for number in range(6):
            assert status("alice", "guess", f"10.0.0.{number}").status_code == 401
        assert status("alice", "wonder", "10.0.0.9").status_code == 200

        # Per account from one address: three wrong passwords, then even the right one is refused there.
        for _ in range(3):
            assert status("alice", "guess", "10.0.1.1").status_code == 401
        locked = status("alice", "wonder", "10.0.1.1")
        assert locked.status_code == 429 and locked.json()["error"]["code"] == "too_many_attempts"
        assert int(locked.headers["retry-after"]) == 15 * 60 - 60
        assert locked.json()["error"]["message"] == ("too many failed sign-ins for this user name or from this "
                                                     "address (3 per 15 minutes); try again in 14 min.")
        assert status("alice", "wonder", "10.0.0.9").status_code == 200  # from her own address she gets in
        assert status("bob", "builder", "10.0.0.9").status_code == 200  # others are not affected
        assert client.get("/v1/status", headers={"X-API-Key": "ck-1"}).status_code == 200

        # A name that does not exist is counted and refused the same way: nothing tells which names exist.
        for _ in range(3):
            assert status("mallory", "guess", "10.1.0.1").status_code == 401
        assert status("mallory", "guess", "10.1.0.1").json() == locked.json()

        # Per address: three wrong sign-ins of different names from one address.
        for name in ("bob", "carol", "dave"):
            assert status(name, "guess", "192.0.2.7").status_code == 401
        assert status("bob", "builder", "192.0.2.7").status_code == 429
        assert status("bob", "builder", "192.0.2.8").status_code == 200

        # Another worker of the volume refuses alice too; the next quarter hour lets her in again.
        with TestClient(create_app(settings, ui=False)) as second:
            second.app.state.access.logins.clock = clock
            refused = second.get("/v1/status", headers={**basic("alice", "wonder"), "X-Forwarded-For": "10.0.1.1"})
            assert refused.status_code == 429
        clock.now = START + 15 * 60
        assert status("alice", "wonder", "10.0.1.1").status_code == 200


def test_an_unknown_address_counts_per_account_only():
    limit = LoginLimit(parse_login_limit("2/h"), clock=Clock(START))
    for _ in range(2):
        assert limit.attempt("alice", None, lambda: None) is None
    with pytest.raises(QuotaExceeded):
        limit.attempt("alice", None, lambda: "alice")
    assert limit.attempt("bob", None, lambda: "bob") == "bob"  # no shared "unknown" address count
    assert limit.attempt("alice", "10.0.0.1", lambda: "alice") == "alice"  # a known address is its own pair


@pytest.mark.slow
def test_the_login_page_says_why_it_refuses(volume):
    settings = settings_for(volume, auth="alice:wonder", login_limit="2/h")
    with TestClient(create_app(settings, ui=False), follow_redirects=False) as client:
        for _ in range(2):
            wrong = client.post("/login", data={"username": "alice", "password": "nope", "next": "/"})
            assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
        page = client.post("/login", data={"username": "alice", "password": "wonder", "next": "/"})
        assert page.status_code == 429 and "Retry-After" in page.headers and "set-cookie" not in page.headers
        assert "Too many failed sign-ins for this user name or from this address (2 per hour)" in page.text
        script = client.post("/login", data={"username": "alice", "password": "wonder"})  # gradio_client's auth=
        assert script.status_code == 429 and script.json()["error"]["code"] == "too_many_attempts"
        assert client.get("/v1/status", headers=basic("alice", "wonder")).status_code == 429  # HTTP Basic too


@pytest.mark.slow
def test_the_gradio_api_refuses_with_the_sentence_and_tells_keys_from_logins(tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from tests.test_e2e import launch_server

    examples = ROOT / "assets" / "examples"
    call = {"person": handle_file(str(examples / "person-1.png")), "mask": handle_file(str(examples / "mask-1.png")),
            "garment": handle_file(str(examples / "garment-1.png")), "steps": 1, "width": 64, "height": 96,
            "api_name": "/tryon"}
    volume = tmp_path / "volume"
    volume.mkdir()
    with launch_server(volume, TRYON_AUTH="alice:pw-a", TRYON_API_KEYS="alice:key-a",
                       TRYON_QUOTA="user=1/h,key=2/h") as server:
        by_key = Client(server["url"] + "/", headers={"X-API-Key": "key-a"}, verbose=False)
        by_login = Client(server["url"] + "/", auth=("alice", "pw-a"), verbose=False)
        by_key.predict(**call)
        by_login.predict(**call)  # the key and the login of alice: each counted by its own rule
        by_key.predict(**call)
        for client, sentence in ((by_login, "quota: 1 try-on per hour for users; 1 used this hour"),
                                 (by_key, "quota: 2 try-ons per hour for API keys; 2 used this hour")):
            with pytest.raises(AppError, match=sentence):
                client.predict(**call)
        saved = sorted((volume / "outputs").rglob("*.png"))
        assert len(saved) == 3
