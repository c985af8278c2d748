"""Who may do what: credentials, signed cookies, the guard on every door, owners and what REST may read."""

from __future__ import annotations

import base64
import multiprocessing
import os
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import SettingError
from app.identity.access import LOGIN_DAYS, Access, load_secret, parse_pairs
from app.web.server import create_app

FAST = {"steps": 1, "width": 64, "height": 96}
USERS = "alice:wonder,bob:builder"
KEYS = "alice:ak-123,ci:ck-456"
SECRET = b"k" * 32


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ALICE, BOB, CI = basic("alice", "wonder"), basic("bob", "builder"), {"X-API-Key": "ck-456"}


# -- credentials and cookies (no server) ----------------------------------------------------------

def test_pairs_come_inline_or_from_a_file(tmp_path):
    assert parse_pairs(" a:1 , b:x:y ", "X", "login") == {"a": "1", "b": "x:y"}  # a password may hold ':'
    listing = tmp_path / "logins"
    listing.write_text("# the team\nalice:has,comma\n\nbob:pw\n")
    assert parse_pairs(f"@{listing}", "X", "login") == {"alice": "has,comma", "bob": "pw"}
    for bad, fragment in (("alice", "entry 1"), ("a:1,a:2", "given twice"), (":pw", "entry 1"),
                          ("al ice:pw", "letters, digits"), (f"@{tmp_path}/missing", "cannot read")):
        with pytest.raises(SettingError, match=fragment):
            parse_pairs(bad, "TRYON_AUTH", "a user:password login")


def test_logins_and_keys_identify_owners():
    access = Access(parse_pairs(USERS, "", ""), parse_pairs(KEYS, "", ""), SECRET)
    assert access.required and access.login("alice", "wonder").owner == "user:alice"
    assert access.login("alice", "wonder!") is None and access.login("carol", "wonder") is None
    assert access.api_key("ak-123").owner == "user:alice"  # a key named after a user shares her gallery
    assert access.api_key("ck-456").owner == "user:ci" and access.api_key("ck-45") is None
    assert access.basic(ALICE["Authorization"]).via == "basic"
    assert access.basic("Basic !!!") is None and access.basic("Basic " + base64.b64encode(b"nocolon").decode()) is None


def test_cookies_are_signed_bound_to_the_password_and_expire():
    access = Access({"alice": "wonder"}, {}, SECRET)
    cookie = access.cookie_for(access.login("alice", "wonder"))
    assert access.from_cookie(cookie).owner == "user:alice"
    kind, value, issued, signature = cookie.split(".")
    forged = f"{kind}.{base64.urlsafe_b64encode(b'bob').decode().rstrip('=')}.{issued}.{signature}"
    assert access.from_cookie(forged) is None
    assert access.from_cookie(cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")) is None
    assert Access({"alice": "new password"}, {}, SECRET).from_cookie(cookie) is None  # password changed
    assert Access({"bob": "x"}, {}, SECRET).from_cookie(cookie) is None  # user removed
    assert Access({"alice": "wonder"}, {}, b"other" * 8).from_cookie(cookie) is None  # another volume's key
    later = int(issued) + LOGIN_DAYS * 86400 + 1
    assert access.from_cookie(cookie, now=later) is None
    assert access.from_cookie("garbage") is None and access.from_cookie("u.x.y.z") is None


def test_visitor_cookies_hold_only_without_logins():
    open_access = Access({}, {}, SECRET)
    visitor = open_access.new_visitor()
    cookie = open_access.cookie_for(visitor)
    assert open_access.from_cookie(cookie) == visitor
    assert Access({"alice": "wonder"}, {}, SECRET).from_cookie(cookie) is None
    assert open_access.new_visitor().owner != visitor.owner


def _make_secret(volume, queue):
    queue.put(load_secret(volume))


@pytest.mark.slow
def test_the_cookie_key_is_made_once_per_volume_by_racing_workers(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_make_secret, args=(tmp_path, queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    keys = {queue.get(timeout=60) for _ in workers}
    for worker in workers:
        worker.join()
    assert len(keys) == 1 and len(keys.pop()) == 32
    key_file = tmp_path / ".secrets" / "session.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"


def test_an_unwritable_volume_still_gets_a_key(tmp_path, caplog):
    (tmp_path / ".secrets").write_text("a file where the folder should be")
    assert len(load_secret(tmp_path)) == 32
    assert "end when it restarts" in caplog.text


# -- the guard on a served app ------------------------------------------------------------------

@pytest.fixture(scope="module")
def served_volume(tmp_path_factory, tiny_volume, images):
    import shutil

    volume = tmp_path_factory.mktemp("access") / "volume"
    shutil.copytree(tiny_volume, volume)
    (volume / "inputs").mkdir()
    for role, image in images.items():
        image.save(volume / "inputs" / f"{role}.png")
    (volume / "envs").mkdir()
    images["person"].save(volume / "envs" / "person.png")
    (volume / "inputs" / "link-to-envs.png").symlink_to(volume / "envs" / "person.png")
    return volume


@pytest.fixture(scope="module")
def guarded(served_volume):
    from app.config import Settings

    settings = Settings.from_env({}, volume=str(served_volume), device="cpu", auth=USERS, api_keys=KEYS)
    with TestClient(create_app(settings), follow_redirects=False) as client:
        yield client


def tryon(client, headers: dict, **body) -> dict:
    request = {"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png", **FAST,
               **body}
    response = client.post("/v1/tryon", json=request, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def assert_unauthorized(response, fragment: str = "sign in") -> None:
    assert response.status_code == 401, (response.request.url, response.status_code, response.text[:200])
    assert response.headers["www-authenticate"].startswith("Basic realm=")
    assert response.json()["error"]["code"] == "unauthorized" and fragment in response.json()["error"]["message"]


@pytest.mark.slow
def test_every_route_but_ping_needs_credentials(guarded):
    assert guarded.get("/ping").status_code == 200
    api_routes = [route for route in guarded.app.routes if getattr(route, "path", "").startswith("/v1/")]
    assert {"/v1/status", "/v1/tryon", "/v1/results", "/v1/docs", "/v1/openapi.json"} <= {r.path for r in api_routes}
    for route in api_routes:
        path = route.path.replace("{result_id}", "20261126-000000000000-aaaaaa-bbbbbb-0123456789abcdef")
        for method in route.methods - {"HEAD"}:
            assert_unauthorized(guarded.request(method, path, headers={"accept": "text/html"}))
    for path in ("/config", "/gradio_api/info", "/gradio_api/openapi.json", "/theme.css",
                 "/gradio_api/file=/etc/passwd", "/gradio_api/queue/data?session_hash=api", "/assets/x.js"):
        assert_unauthorized(guarded.get(path))
    assert_unauthorized(guarded.post("/gradio_api/queue/join", json={"data": [], "fn_index": 0,
                                                                      "session_hash": "api"}))
    assert_unauthorized(guarded.post("/gradio_api/upload", files={"files": ("a.png", b"x")}))
    page = guarded.get("/", headers={"accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/"


def test_wrong_credentials_are_refused_everywhere(guarded):
    assert_unauthorized(guarded.get("/v1/status", headers=basic("alice", "wrong")), "wrong")
    assert_unauthorized(guarded.get("/v1/status", headers=basic("mallory", "wonder")), "wrong")
    assert_unauthorized(guarded.get("/v1/status", headers={"X-API-Key": "ck-457"}), "not valid")
    assert_unauthorized(guarded.get("/config", headers={"X-API-Key": "nope", **ALICE}), "not valid")
    assert_unauthorized(guarded.get("/v1/status", headers={"cookie": "tryon_session=u.YWxpY2U.1.forged"}))
    assert guarded.get("/v1/status", headers={"Authorization": "Bearer a-load-balancer-key", **CI}).status_code == 200


def test_login_page_signs_in_and_out(guarded):
    form = guarded.get("/login?next=/%3Fx%3D1")
    assert form.status_code == 200 and 'name="next" value="/?x=1"' in form.text
    wrong = guarded.post("/login", data={"username": "alice", "password": "nope", "next": "/"})
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text and "tryon_session" not in str(
        wrong.headers)
    signed = guarded.post("/login", data={"username": "alice", "password": "wonder", "next": "//evil.example/"})
    assert signed.status_code == 303 and signed.headers["location"] == "/"  # never off this server
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert guarded.cookies["tryon_session"] == signed.cookies["tryon_session"]
    try:
        assert guarded.get("/").status_code == 200
        assert guarded.get("/v1/results").status_code == 200
        out = guarded.get("/logout")
        assert out.status_code == 303 and 'tryon_session=""' in out.headers["set-cookie"]
        assert_unauthorized(guarded.get("/v1/results"))
        script = guarded.post("/login", data={"username": "bob", "password": "builder"})  # as gradio_client does
        assert script.status_code == 200 and script.json() == {"success": True}
        assert guarded.get("/v1/status").status_code == 200
    finally:
        guarded.cookies.clear()


def test_signing_out_ends_every_session_of_that_user_on_every_worker(guarded, served_volume):
    def sign_in() -> str:
        answer = guarded.post("/login", data={"username": "alice", "password": "wonder"})
        assert answer.status_code == 200
        cookie = guarded.cookies["tryon_session"]
        guarded.cookies.clear()
        return cookie

    laptop = sign_in()
    access = guarded.app.state.access  # another browser, signed in a minute earlier
    phone = access.cookie_for(access.login("alice", "wonder"), now=time.time() - 60)
    assert phone != laptop
    assert guarded.post("/login", data={"username": "bob", "password": "builder"}).status_code == 200
    bobs = guarded.cookies["tryon_session"]
    guarded.cookies.clear()
    as_cookie = lambda value: {"cookie": f"tryon_session={value}"}  # noqa: E731
    # A second worker of the same volume, its own process state.
    other = Access.from_settings(Settings_for(served_volume))
    assert other.from_cookie(phone) is not None
    assert guarded.get("/v1/results", headers=as_cookie(phone)).status_code == 200
    out = guarded.get("/logout", headers=as_cookie(laptop))
    assert out.status_code == 303
    assert_unauthorized(guarded.get("/v1/results", headers=as_cookie(phone)))  # the other browser too
    assert_unauthorized(guarded.get("/v1/results", headers=as_cookie(laptop)))
    assert guarded.get("/v1/results", headers=as_cookie(bobs)).status_code == 200  # nobody else's
    other.sessions.ttl = 0  # the other worker reads the volume at its next check
    assert other.from_cookie(phone) is None
    assert guarded.get("/v1/results", headers=as_cookie(sign_in())).status_code == 200  # signing in again works


def Settings_for(volume):  # noqa: N802 - reads as the settings of that volume
    from app.config import Settings

    return Settings.from_env({}, volume=str(volume), device="cpu", auth=USERS, api_keys=KEYS)


def test_owners_see_only_their_results_and_others_ids_are_not_found(guarded):
    mine = tryon(guarded, ALICE, seed=11)
    by_key = tryon(guarded, {"X-API-Key": "ak-123"}, seed=12)  # the key named alice: alice's results
    theirs = tryon(guarded, BOB, seed=13)
    alice_ids = [r["id"] for r in guarded.get("/v1/results", headers=ALICE).json()["results"]]
    assert alice_ids[:2] == [by_key["id"], mine["id"]] and theirs["id"] not in alice_ids
    bob = guarded.get("/v1/results", headers=BOB).json()
    assert [r["id"] for r in bob["results"]] == [theirs["id"]] and bob["total"] == 1
    assert "owner" not in bob["results"][0]
    assert guarded.get("/v1/results", headers=CI).json()["total"] == 0

    image = guarded.get(f"/v1/results/{mine['id']}/image", headers=ALICE)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == (guarded.app.state.settings.layout.root / mine["output"]).read_bytes()
    assert guarded.get(f"/v1/results/{mine['id']}", headers=ALICE).json()["seed"] == 11
    for path in (f"/v1/results/{mine['id']}", f"/v1/results/{mine['id']}/image", "/v1/results/not-an-id"):
        response = guarded.get(path, headers=BOB)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_a_result_is_reused_by_id_by_its_owner_only(guarded):
    first = tryon(guarded, ALICE, keep_photo=False, return_image=True)
    again = tryon(guarded, ALICE, person={"result": first["id"]}, mask="auto", keep_photo=False)
    sidecar = guarded.get(f"/v1/results/{again['id']}", headers=ALICE).json()
    with Image.open(guarded.app.state.settings.layout.root / first["output"]) as image:
        from app.tryons.outputs import image_digest

        assert sidecar["inputs"]["person"] == image_digest(image.convert("RGB"))
    stolen = guarded.post("/v1/tryon", headers=BOB, json={"person": {"result": first["id"]}, "garment":
                                                          "inputs/garment.png", "mask": "auto", **FAST})
    assert stolen.status_code == 404 and "among yours" in stolen.json()["error"]["message"]


@pytest.mark.parametrize("path", ["outputs/x.png", "models/a.png", "envs/person.png", "tiny-models/x.png",
                                  ".secrets/session.key", "inputs/link-to-envs.png", "inputs/../envs/person.png"])
def test_rest_reads_only_the_input_folders(guarded, path):
    response = guarded.post("/v1/tryon", headers=ALICE, json={"person": path, "garment": "inputs/garment.png",
                                                              "mask": "auto", **FAST})
    assert response.status_code == 400 and response.json()["error"]["code"] == "bad_path"


def test_a_previous_result_path_is_refused(guarded):
    made = tryon(guarded, ALICE)
    response = guarded.post("/v1/tryon", headers=ALICE, json={"person": made["output"],
                                                              "garment": "inputs/garment.png", **FAST})
    assert response.status_code == 400 and '{"result": "<id>"}' in response.json()["error"]["message"]


def test_input_folders_are_configurable(served_volume, make_settings):
    (served_volume / "shared").mkdir(exist_ok=True)
    Image.open(served_volume / "inputs" / "person.png").save(served_volume / "shared" / "p.png")
    settings = make_settings(served_volume, input_dirs="shared")
    with TestClient(create_app(settings, ui=False)) as client:
        ok = client.post("/v1/tryon", json={"person": "shared/p.png", "garment": "shared/p.png", "mask": "auto",
                                            **FAST})
        assert ok.status_code == 200, ok.text
        assert client.post("/v1/tryon", json={"person": "inputs/person.png", "garment": "shared/p.png",
                                              **FAST}).status_code == 400
    with pytest.raises(SettingError, match="inside the volume"):
        create_app(make_settings(served_volume, input_dirs="inputs,../etc"), ui=False)


def test_without_logins_rest_callers_own_what_nobody_can_list(served_volume, make_settings):
    with TestClient(create_app(make_settings(served_volume, gallery="own"), ui=False)) as client:
        made = tryon(client, {})
        assert client.get("/v1/results").json()["total"] == 0
        assert client.get(f"/v1/results/{made['id']}").status_code == 404
        assert "set-cookie" not in client.get("/v1/status").headers  # REST gets no visitor cookie
        assert_unauthorized(client.get("/v1/status", headers={"X-API-Key": "k"}), "no API keys")
        assert_unauthorized(client.get("/v1/status", headers=basic("alice", "anything")), "no logins")
        assert_unauthorized(client.get("/", headers=basic("alice", "anything")), "no logins")


def test_team_studio_shows_everyone_everything(served_volume, make_settings):
    settings = make_settings(served_volume, auth=USERS, gallery="all")
    with TestClient(create_app(settings, ui=False)) as client:
        made = tryon(client, ALICE)
        assert made["id"] in [r["id"] for r in client.get("/v1/results?per_page=100", headers=BOB).json()["results"]]
        assert client.get(f"/v1/results/{made['id']}/image", headers=BOB).status_code == 200
        assert_unauthorized(client.get("/v1/results"))


def test_results_pages_are_bounded(guarded):
    for query, fragment in (("per_page=0", "per_page"), ("per_page=101", "per_page"), ("page=0", "page")):
        response = guarded.get(f"/v1/results?{query}", headers=ALICE)
        assert response.status_code == 400 and fragment in response.json()["error"]["message"]
    made = guarded.get("/v1/results?per_page=1", headers=ALICE).json()["total"]
    for _ in range(2 - made):  # run alone, or before the tests that make Alice's results
        tryon(guarded, ALICE)
    page = guarded.get("/v1/results?per_page=1&page=1", headers=ALICE).json()
    assert page["per_page"] == 1 and page["next_page"] == 2 and page["pages"] == page["total"] >= 2


def test_settings_never_print_secrets(served_volume):
    import subprocess
    import sys

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRYON_")}, "TRYON_AUTH": "alice:wonder",
           "TRYON_API_KEYS": "ci:ck-456", "TRYON_VOLUME": str(served_volume)}
    shown = subprocess.run([sys.executable, "-m", "app", "settings"], env=env, capture_output=True, text=True,
                           check=True).stdout
    assert "wonder" not in shown and "ck-456" not in shown and "(set)" in shown
