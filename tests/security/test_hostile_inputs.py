"""Hostile query and body values answer 4xx, never 5xx, and are never echoed: tampered pagination cursors on
every paginated endpoint, audit dates at the calendar's ends, model sources that are not model directories
inside a model root, unknown fields, lax types. Explicit cases first, then a property-based fuzz (hypothesis)
of the cursor, date and source parameters over the real server."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from tests.service.support import Live, make_model_dir, start_live, stop_live
from unlearnd.api.models import AuditRecord, BaseModel

from .conftest import expect_error, publish_request, sessions

MARKER = "Zq7Marker"  # in every hostile value below: an answer that contains it echoed the input


def _cursor(position) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """This module's server: no rate limit (the fuzz sends hundreds of requests; 429s have their own tests)."""
    lv = start_live(tmp_path_factory.mktemp("hostile") / "data", run_jobs=False, rate_limit_per_minute=0)
    yield lv
    stop_live(lv)


@pytest.fixture(scope="module")
def ids(live: Live) -> dict:
    """A model (registered over HTTP) with one published request: a job with events, an adapter, an audit."""
    model_id = live.client.post(
        "/v1/models", json={"name": "hostile", "source": make_model_dir(live.settings, "hostile")}
    )
    model_id = model_id.raise_for_status().json()["id"]
    request_id = publish_request(sessions(live), live.settings, model_id, "hostile-subject")
    with sessions(live)() as session:
        job_id = session.scalar(select(AuditRecord.job_id).where(AuditRecord.request_id == request_id))
    return {"model": model_id, "job": job_id}


def _paginated(ids: dict) -> list[tuple[str, str, str]]:
    """(path, the key its cursors hold, its kind) of every paginated endpoint."""
    return [
        ("/v1/audits", "seq", "int"),
        (f"/v1/jobs/{ids['job']}/events", "id", "int"),
        ("/v1/models", "id", "id"),
        (f"/v1/models/{ids['model']}/adapters", "version", "int"),
    ]


# --- 1. cursors ----------------------------------------------------------------------------------------------

# Values no cursor may hold; per kind: "int" positions (seq, event id, version), "id" positions (a model id).
BAD_VALUES = {
    "int": ["1", True, 1.5, -1, 2**31, 2**63, 10**30, None, [1], {"n": 1}, f"\x00{MARKER}"],
    "id": [1, True, None, "", "a/b", f"\x00{MARKER}", MARKER * 20, [MARKER], {"nested": MARKER}, 2**64],
}
MALFORMED = [
    "garbage!",
    "x" * 5000,
    f"{MARKER}é",
    _cursor([1, 2]),
    _cursor("seq"),
    _cursor(None),
    _cursor({}),
    base64.urlsafe_b64encode(b"[" * 100 + b"]" * 100).decode(),
    base64.urlsafe_b64encode(b"\xff\xfe" + MARKER.encode()).decode(),
]


def _tampered(key: str, kind: str) -> list[str]:
    return [
        *MALFORMED,
        _cursor({key: 1, "extra": 2}),
        _cursor({"other": 1}),
        *(_cursor({key: value}) for value in BAD_VALUES[kind]),
    ]


def test_tampered_cursors_are_422_invalid_cursor_on_every_paginated_endpoint(live: Live, ids: dict):
    for path, key, kind in _paginated(ids):
        for cursor in _tampered(key, kind):
            r = live.client.get(path, params={"cursor": cursor})
            assert r.status_code == 422, (path, cursor, r.text)
            assert r.json()["error"]["code"] == "invalid_cursor"
            assert MARKER not in r.text and cursor not in r.text  # the cursor is not echoed
            assert r.headers.get("connection") != "close"  # the keep-alive connection survives


def test_the_cursors_the_api_returns_still_work(live: Live, ids: dict):
    for i in range(3):
        publish_request(sessions(live), live.settings, ids["model"], f"pager-{i}")
    _register(live, make_model_dir(live.settings, "second-page")).raise_for_status()
    for path, _, _ in _paginated(ids):
        first = live.client.get(path, params={"limit": 1}).raise_for_status().json()
        assert first["next"], path
        second = live.client.get(path, params={"limit": 1, "cursor": first["next"]}).raise_for_status().json()
        assert second["data"] != first["data"] or not second["data"], path


# --- 2. dates ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "since, until",
    [
        ("0001-01-01T00:00:00+14:00", None),
        ("0001-01-01T00:00:00+23:59", "0001-01-01T05:00:00+12:00"),
        (None, "9999-12-31T23:59:59-14:00"),
        ("9999-12-31T23:59:59.999999-23:59", None),
        ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_audit_dates_at_the_calendar_limits_filter_instead_of_failing(live: Live, ids: dict, since, until):
    params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
    r = live.client.get("/v1/audits", params=params)
    assert r.status_code == 200, r.text
    got = len(r.json()["data"])
    everything = len(live.client.get("/v1/audits").json()["data"])
    # before every record, or after every record: an instant out of datetime's UTC range filters like one in it
    starts_early = since is None or since.startswith("0001")
    ends_late = until is None or until.startswith("9999")
    assert got == (everything if starts_early and ends_late else 0)


# --- 3 and 4. model sources ------------------------------------------------------------------------------------


REFUSED = "invalid_model_source"


def _register(live: Live, source: str, name: str | None = None) -> httpx.Response:
    return live.client.post("/v1/models", json={"name": name or f"m-{uuid.uuid4().hex[:12]}", "source": source})


def test_every_refused_source_gets_the_same_answer_whether_or_not_it_exists(live: Live, tmp_path: Path):
    outside = tmp_path / "outside-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    root = live.settings.resolved_model_roots[0]
    (root / "no-config").mkdir(parents=True, exist_ok=True)
    sources = [
        "/etc",
        "/",
        str(live.settings.data_dir.resolve()),  # the service's own data directory
        str(outside),  # a real model directory, outside every root
        str(tmp_path / "does-not-exist"),
        "/proc/self/cwd",
        "/proc/self/root/etc",
        str(root),  # the root itself
        str(root / ".." / "outside-model"),
        "../outside-model",
        "no-config",  # inside a root, but not a model directory
        "does-not-exist",
        "~root",
        "~nosuchuser-zq7/model",  # expanded on main: RuntimeError, a 500
        "n" * 300,  # longer than a file name may be: OSError, a 500 on main
        f"{'d' * 200}/{'e' * 300}",
        "with\x00nul",
        f"/{MARKER}",
    ]
    bodies = set()
    for source in sources:
        r = _register(live, source)
        err = expect_error(r, 422, REFUSED)
        bodies.add(r.content)
        assert err["details"] is None
        assert source not in r.text and MARKER not in r.text and "nosuchuser" not in r.text
    assert len(bodies) == 1, bodies  # one answer: it tells nothing about which paths exist


def test_unreadable_paths_are_refused_not_500(live: Live, monkeypatch: pytest.MonkeyPatch):
    """A path the server may not read (simulated: the tests may run as root, for whom nothing is unreadable)."""
    source = make_model_dir(live.settings, "unreadable")
    real_stat, real_lstat = os.stat, os.lstat

    def denied(real):
        def stat(path, *args, **kwargs):
            if "unreadable" in os.fsdecode(path):
                raise PermissionError(13, "Permission denied", os.fsdecode(path))
            return real(path, *args, **kwargs)

        return stat

    monkeypatch.setattr(os, "stat", denied(real_stat))
    monkeypatch.setattr(os, "lstat", denied(real_lstat))
    expect_error(_register(live, source), 422, REFUSED)
    expect_error(_register(live, "unreadable"), 422, REFUSED)


def test_symlinks_are_confined_to_their_root(live: Live, tmp_path: Path):
    root = live.settings.resolved_model_roots[0]
    outside = tmp_path / "secret-model"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (root / "escape").symlink_to(outside)
    expect_error(_register(live, "escape"), 422, REFUSED)
    expect_error(_register(live, str(root / "escape")), 422, REFUSED)
    inside = make_model_dir(live.settings, "real-target")
    (root / "alias").symlink_to(root / inside)
    model = _register(live, "alias").raise_for_status().json()
    assert model["source"] == "alias"  # as given, not the symlink's target


def test_the_stored_and_shown_source_is_relative_to_its_root(live: Live):
    absolute = make_model_dir(live.settings, "org/support-bot")
    for as_given in ("org/support-bot", absolute, "./org/support-bot", "org//support-bot/"):
        model = _register(live, as_given).raise_for_status().json()
        assert model["source"] == "org/support-bot"
        assert live.client.get(f"/v1/models/{model['id']}").json()["source"] == "org/support-bot"
    with sessions(live)() as session:
        stored = set(session.scalars(select(BaseModel.source).where(BaseModel.name.like("m-%"))))
    assert not any(s.startswith("/") for s in stored), stored  # no resolved (absolute) path is stored


# --- 7. nothing echoed ---------------------------------------------------------------------------------------


def test_4xx_bodies_never_echo_the_submitted_values(live: Live, ids: dict):
    name = f"echo-{MARKER}"
    _register(live, make_model_dir(live.settings, "echo"), name).raise_for_status()
    subject = {"id": "s", "legal_basis": "GDPR Art. 17"}
    answers = [
        live.client.post("/v1/models", json={"name": "x", "source": "echo", f"{MARKER}field": 1}),
        live.client.post("/v1/models", json={"name": "x", "source": "echo", "default_config": {MARKER: 1}}),
        _register(live, f"/srv/{MARKER}"),
        _register(live, make_model_dir(live.settings, "echo-2"), name),  # the name is taken: 409
        live.client.get("/v1/audits", params={"cursor": _cursor({"seq": MARKER})}),
        live.client.get(f"/v1/models/mdl_{MARKER}"),
        live.client.post("/v1/forget-requests", json={"model_id": f"mdl_{MARKER}", "subject": subject, "records": []}),
        live.client.post(
            "/v1/forget-requests",
            json={"model_id": f"mdl_{MARKER}", "subject": subject, "records": [{"text": "r"}]},
        ),
        live.client.post(
            "/v1/forget-requests",
            json={"model_id": ids["model"], "subject": subject, "records": [{"text": "r", MARKER: "x"}]},
        ),
    ]
    for r in answers:
        assert 400 <= r.status_code < 500, r.text
        assert MARKER not in r.text, r.text
    assert answers[0].json()["error"]["details"][0] == {
        "loc": ["body"],
        "msg": "unknown field (only the documented fields are accepted)",
        "type": "extra_forbidden",
    }


# --- 12. strict types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [{"lr": True}, {"max_steps": "5"}, {"max_steps": 5.0}, {"rank": False}, {"lr": "0.001"}, {"seed": "0"}],
)
def test_request_bodies_are_strictly_typed(live: Live, ids: dict, config: dict):
    body = {"model_id": ids["model"], "subject": {"id": "s", "legal_basis": "x"}, "records": [{"text": "r"}]}
    err = expect_error(
        live.client.post("/v1/forget-requests", json={**body, "config": config}), 422, "validation_error"
    )
    assert err["details"][0]["loc"] == ["body", "config", next(iter(config))]
    model = {"name": "strict", "source": "echo", "default_config": config}
    expect_error(live.client.post("/v1/models", json=model), 422, "validation_error")


def test_an_int_is_still_a_valid_float(live: Live, ids: dict):
    body = {"model_id": ids["model"], "subject": {"id": "s", "legal_basis": "x"}, "records": [{"text": "r"}]}
    r = live.client.post("/v1/forget-requests", json={**body, "config": {"lr": 1, "max_steps": 5}})
    assert r.status_code == 202, r.text
    assert r.json()["config"]["lr"] == 1.0 and r.json()["config"]["max_steps"] == 5
    live.client.post(f"/v1/forget-requests/{r.json()['id']}/cancel").raise_for_status()  # this server runs no jobs


# --- the property-based fuzz (acceptance: no 5xx) --------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
_json = st.recursive(
    _json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner), max_leaves=6
)
_keys = st.sampled_from(["seq", "id", "version"])
_positions = st.one_of(
    _json,
    st.builds(lambda k, v: {k: v}, _keys, _json),
    st.builds(lambda k, v: {k: v}, _keys, st.integers(min_value=-(2**80), max_value=2**80)),
    st.builds(lambda k, v: {k: v}, _keys, st.text(alphabet=st.characters(codec="utf-8"), max_size=50)),
)
CURSORS = st.one_of(
    _positions.map(_cursor), st.text(max_size=300), st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode())
)

_OFFSETS = [timezone(timedelta(minutes=m)) for m in (0, 1, 14 * 60, -14 * 60, 23 * 60 + 59, -(23 * 60 + 59))]
_instants = st.datetimes(
    min_value=datetime(1, 1, 1),
    max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
    timezones=st.sampled_from([None, *_OFFSETS]),
)
_edges = st.builds(
    lambda day, tz: day.replace(tzinfo=tz),
    st.sampled_from(
        [
            datetime(1, 1, 1),
            datetime(1, 1, 1, 23, 59),
            datetime(9999, 12, 31),
            datetime(9999, 12, 31, 23, 59, 59, 999999),
        ]
    ),
    st.sampled_from(_OFFSETS),
)
DATES = st.one_of(
    _instants.map(datetime.isoformat), _edges.map(datetime.isoformat), st.text(max_size=40), st.integers().map(str)
)

_segments = st.one_of(
    st.sampled_from(["..", ".", "~", "~root", "~nosuchuser", "proc", "self", "etc", "hostile", "", "n" * 300]),
    st.text(max_size=30),
)
SOURCES = st.one_of(
    st.text(max_size=100),
    st.lists(_segments, min_size=1, max_size=5).map("/".join),
    st.lists(_segments, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["/etc", "/", "/proc/self/cwd", "/proc/self/environ", "~", "~root/.ssh", "hostile/../hostile"]),
)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _no_server_error(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.request.url, r.text)
    if r.status_code >= 400:
        assert r.json()["error"]["code"]


def test_fuzzed_cursors_never_answer_5xx(live: Live, ids: dict):
    paths = [path for path, _, _ in _paginated(ids)]

    @FUZZ
    @given(cursor=CURSORS, path=st.sampled_from(paths))
    @example(cursor=_cursor({"seq": 2**64}), path="/v1/audits")
    @example(cursor=_cursor({"id": "\x00"}), path="/v1/models")
    def fuzz(cursor: str, path: str) -> None:
        r = live.client.get(path, params={"cursor": cursor})
        _no_server_error(r)
        assert r.status_code in (200, 422), r.text

    fuzz()


def test_fuzzed_audit_dates_never_answer_5xx(live: Live, ids: dict):
    @FUZZ
    @given(since=DATES, until=DATES)
    @example(since="0001-01-01T00:00:00+14:00", until="9999-12-31T23:59:59-14:00")
    def fuzz(since: str, until: str) -> None:
        r = live.client.get("/v1/audits", params={"since": since, "until": until})
        _no_server_error(r)
        assert r.status_code in (200, 422), r.text

    fuzz()


def test_fuzzed_model_sources_never_answer_5xx_and_stay_confined(live: Live, ids: dict):
    make_model_dir(live.settings, "hostile")
    roots = [Path(os.path.realpath(root)) for root in live.settings.resolved_model_roots]

    @FUZZ
    @given(source=SOURCES)
    @example(source="~nosuchuser/model")
    @example(source="n" * 300)
    def fuzz(source: str) -> None:
        r = _register(live, source)
        _no_server_error(r)
        assert r.status_code in (201, 422), r.text
        if r.status_code == 201:  # only a model directory inside a root, shown relative to it
            shown = r.json()["source"]
            assert not shown.startswith("/") and ".." not in shown.split("/")
            assert any((root / shown).resolve().is_relative_to(root) for root in roots)
            assert (live.settings.resolved_model_roots[0] / shown / "config.json").is_file() or any(
                (root / shown / "config.json").is_file() for root in roots
            )

    fuzz()


def test_dates_and_cursors_with_an_aware_utc_filter_still_select_the_right_records(live: Live, ids: dict):
    now = datetime.now(UTC)
    recent = live.client.get("/v1/audits", params={"since": (now - timedelta(hours=1)).isoformat()}).json()["data"]
    assert recent  # records published by this module's fixtures
    assert live.client.get("/v1/audits", params={"since": (now + timedelta(hours=1)).isoformat()}).json()["data"] == []
