"""The embedded IAM / STS stand-in: long-term keys, temporary credentials, revocation, and the file they
live in (``credentials.json`` in the state folder)."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from forwarder_local.stores import CredentialsError, LocalCredentials

USER = "arn:aws:iam::000000000000:user/forwarder-demo"
OTHER = "arn:aws:iam::000000000000:user/forwarder-other"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def credentials(tmp_path: Path, clock: Clock) -> LocalCredentials:
    return LocalCredentials(tmp_path / "credentials.json", clock=clock)


def test_keys_live_in_a_file_only_its_owner_reads_and_session_tokens_are_not_kept(
    tmp_path: Path, credentials: LocalCredentials
) -> None:
    # given a long-term key and temporary credentials issued with it
    access_key, secret = credentials.create_key(USER)
    session = credentials.create_session(access_key, duration_seconds=900)
    # then the file is readable by its owner only, and holds no session token in clear
    path = tmp_path / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert session.session_token not in path.read_text()
    # and the listing shows each key with its user, never a secret
    listed = {key.access_key_id: key for key in credentials.issued()}
    assert listed[access_key].user_arn == USER and not listed[access_key].temporary
    temporary = listed[session.access_key_id]
    assert temporary.temporary and temporary.issued_from == access_key and temporary.user_arn == USER
    assert temporary.expires_at == "2027-01-15T08:15:00Z"  # 1,800,000,000 + 900 s
    assert secret not in repr(credentials.issued())


def test_ensure_issues_a_users_first_key_once_and_never_replaces_a_revoked_one(
    credentials: LocalCredentials,
) -> None:
    # given a user the stack issued a key at its first start
    first = credentials.ensure(USER)
    assert first is not None and first[0].startswith("AKIA")
    # when the stack starts again, then the user keeps that key
    assert credentials.ensure(USER) == first
    # when the key is revoked, then a restart issues none (revocation stays)
    credentials.revoke(first[0])
    assert credentials.ensure(USER) is None
    assert credentials.for_user(USER) is None
    # and `clients create` issues a new one, which the user then has
    second = credentials.create_key(USER)
    assert credentials.for_user(USER) == second
    assert credentials.ensure(USER) == second


def test_revoking_wipes_the_secret_and_covers_the_temporary_credentials_issued_with_the_key(
    tmp_path: Path, credentials: LocalCredentials
) -> None:
    access_key, secret = credentials.create_key(USER)
    other_key, _ = credentials.create_key(OTHER)
    session = credentials.create_session(access_key)
    unrelated = credentials.create_session(other_key)

    revoked = credentials.revoke(access_key)

    assert revoked == [access_key, session.access_key_id]
    assert secret not in (tmp_path / "credentials.json").read_text()
    assert credentials.secret_for(access_key) is None
    assert credentials.secret_for(session.access_key_id) is None
    assert credentials.secret_for(unrelated.access_key_id) is not None
    assert credentials.lookup(access_key) is not None
    assert credentials.lookup(access_key).state(0) == "revoked"  # type: ignore[union-attr]


@pytest.mark.parametrize("case", ["unknown", "revoked twice", "session of a session", "session of revoked"])
def test_what_cannot_be_issued_or_revoked_is_refused_saying_why(
    credentials: LocalCredentials, case: str
) -> None:
    access_key, _ = credentials.create_key(USER)
    with pytest.raises(CredentialsError) as refused:
        if case == "unknown":
            credentials.revoke("AKIANEVERISSUED00000")
        elif case == "revoked twice":
            credentials.revoke(access_key)
            credentials.revoke(access_key)
        elif case == "session of a session":
            credentials.create_session(credentials.create_session(access_key).access_key_id)
        else:
            credentials.revoke(access_key)
            credentials.create_session(access_key)
    expected = {
        "unknown": "was not issued here",
        "revoked twice": "is revoked already",
        "session of a session": "is temporary",
        "session of revoked": "is revoked",
    }[case]
    assert expected in str(refused.value)


def test_temporary_credentials_expire_and_are_dropped_a_day_later(
    credentials: LocalCredentials, clock: Clock
) -> None:
    access_key, _ = credentials.create_key(USER)
    old = credentials.create_session(access_key, duration_seconds=900)
    clock.now += 900
    assert credentials.lookup(old.access_key_id).state(clock.now) == "expired"  # type: ignore[union-attr]
    clock.now += 86_401
    credentials.create_session(access_key)
    assert credentials.lookup(old.access_key_id) is None


def test_keys_issued_at_once_from_two_processes_are_all_kept(tmp_path: Path) -> None:
    # given two stores on one file (the stack and the CLI), issuing keys at the same time
    stores = [LocalCredentials(tmp_path / "credentials.json") for _ in range(2)]
    issued: list[str] = []

    def issue(store: LocalCredentials) -> None:
        for _ in range(20):
            issued.append(store.create_key(USER)[0])

    threads = [threading.Thread(target=issue, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # then every key is on file
    assert sorted(key.access_key_id for key in stores[0].issued()) == sorted(issued)
    assert len(issued) == 40
