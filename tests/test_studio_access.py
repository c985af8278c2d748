"""The studio behind logins, in a real browser: two people, one server, each sees only their own results."""

from __future__ import annotations

import httpx
import pytest

from tests.test_e2e import CHROMIUM, launch_server

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium); "
                                "CI installs it")
FAST = {"steps": 1, "width": 64, "height": 96}


@pytest.fixture(scope="module")
def team(tmp_path_factory, images):
    volume = tmp_path_factory.mktemp("team-volume")
    (volume / "inputs").mkdir()
    for role, image in images.items():
        image.save(volume / "inputs" / f"{role}.png")
    with launch_server(volume, TRYON_AUTH="alice:wonder,bob:builder", TRYON_API_KEYS="alice:ak-123") as server:
        made = {"alice": [], "bob": []}
        for who, auth, seeds in (("alice", ("alice", "wonder"), (101, 102)), ("bob", ("bob", "builder"), (201,))):
            for seed in seeds:
                response = httpx.post(f"{server['url']}/v1/tryon", auth=auth, timeout=120, json={
                    "person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png",
                    "seed": seed, **FAST})
                assert response.status_code == 200, response.text
                made[who].append(response.json())
        server["made"] = made
        yield server


def sign_in(browser, url: str, user: str, password: str):
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.goto(url + "/")
    assert "/login" in page.url  # sent to the login page first
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_selector("#run", timeout=60_000)
    return context, page


def gallery_captions(page) -> list[str]:
    page.wait_for_function("() => /result/.test(document.querySelector('#page-label')?.innerText || '')",
                           timeout=30_000)
    return [text.strip() for text in page.locator("#gallery .thumbnail-item").all_inner_texts()]


def test_two_people_each_see_only_their_own_results(browser, team):
    alice, alice_page = sign_in(browser, team["url"], "alice", "wonder")
    bob, bob_page = sign_in(browser, team["url"], "bob", "builder")
    try:
        for page, name in ((alice_page, "alice"), (bob_page, "bob")):
            # The line arrives with the page's load event: wait for it as a person would, then read it.
            page.wait_for_function("name => (document.querySelector('#who')?.innerText || '')"
                                   ".includes('Signed in as ' + name)", arg=name, timeout=30_000)
        assert len(gallery_captions(alice_page)) == 2 and len(gallery_captions(bob_page)) == 1
        alice_label = alice_page.locator("#page-label").inner_text()
        assert "2 results" in alice_label, alice_label
        assert "1 result" in bob_page.locator("#page-label").inner_text()
        bob_page.locator("#gallery .thumbnail-item").first.click()
        bob_page.wait_for_function("() => (document.querySelector('#selected-summary')?.innerText || '')"
                                   ".includes('201')", timeout=30_000)
        assert "101" not in bob_page.locator("#selected-summary").inner_text()
        # The page's own requests carry the login cookie: the REST API answers them as the same person.
        listed = alice_page.evaluate("() => fetch('/v1/results').then(r => r.json())")
        assert sorted(r["seed"] for r in listed["results"]) == [101, 102]
        alice_id = team["made"]["alice"][0]["id"]
        assert bob_page.evaluate("id => fetch('/v1/results/' + id).then(r => r.status)", alice_id) == 404
    finally:
        alice.close()
        bob.close()


def test_wrong_password_stays_on_the_login_page_and_sign_out_ends_the_session(browser, team):
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(team["url"] + "/")
        page.fill("#username", "alice")
        page.fill("#password", "not it")
        page.click("button[type=submit]")
        page.wait_for_selector(".error")
        assert "Wrong user name or password" in page.inner_text(".error") and "/login" in page.url
        page.fill("#password", "wonder")
        page.click("button[type=submit]")
        page.wait_for_selector("#run", timeout=60_000)
        page.locator("#who a").click()
        page.wait_for_url("**/login**")
        assert page.request.get(team["url"] + "/v1/results").status == 401
    finally:
        context.close()
