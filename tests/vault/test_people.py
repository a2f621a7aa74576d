"""People: create from any JSON, unique keyed-hash indexes, lookups by mode, merge/JSON patch, forget-me."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from vault.core import Vault
from vault.errors import BadInput, Conflict, NotFound
from vault.models import data_keys_table, forgotten_table, people_table


def test_create_and_read_by_every_mode(vault: Vault) -> None:
    profile = {"login": "jdoe", "email": "John.Doe@Example.com ", "phone": "07700 900123", "custom": "crm-17",
               "name": {"first": "John", "last": "Doe"}, "tags": ["a", 1, None, True]}
    pid = vault.create_person(profile)
    for mode, ident in [("token", pid), ("token", pid.upper()), ("login", "jdoe"), ("email", "john.doe@example.com"),
                        ("email", "  JOHN.DOE@example.COM"), ("phone", "+44 7700 900123"),
                        ("phone", "+447700900123"), ("custom", "crm-17")]:
        assert vault.get_person(mode, ident) == (pid, profile)


def test_at_least_one_index_is_required(vault: Vault) -> None:
    with pytest.raises(BadInput, match="at least one of login, email, phone, custom"):
        vault.create_person({"name": "nobody"})


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({}, "non-empty JSON object"),
        ([{"email": "a@example.com"}], "non-empty JSON object"),
        ({"email": "not-an-email"}, "invalid email"),
        ({"phone": "call me"}, "invalid phone"),
        ({"login": ""}, "login"),
        ({"email": 17}, "email"),
    ],
)
def test_bad_profiles_are_refused_and_nothing_is_written(vault: Vault, profile: object, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        vault.create_person(profile)
    with vault.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(people_table)).scalar_one() == 0


@pytest.mark.parametrize("mode", ["email", "phone", "login", "custom"])
def test_indexes_are_unique(vault: Vault, mode: str) -> None:
    values = {"email": ("a@example.com", "A@EXAMPLE.com"), "phone": ("07700900123", "+44 7700 900 123"),
              "login": ("sam", "sam"), "custom": ("c1", "c1")}[mode]
    vault.create_person({mode: values[0]})
    with pytest.raises(Conflict, match=f"duplicate index: {mode}"):
        vault.create_person({mode: values[1]})


def test_unknown_modes_and_people(vault: Vault) -> None:
    with pytest.raises(BadInput, match="unknown mode"):
        vault.get_person("nickname", "x")
    with pytest.raises(NotFound):
        vault.get_person("email", "ghost@example.com")
    with pytest.raises(BadInput, match="invalid person token"):
        vault.get_person("token", "not-a-uuid")


def test_merge_patch_changes_and_reindexes(vault: Vault) -> None:
    pid = vault.create_person({"email": "old@example.com", "name": "Old", "city": "Leeds"})
    vault.update_person("email", "old@example.com", {"email": "new@example.com", "city": None, "age": 40})
    assert vault.get_person("email", "new@example.com") == (pid, {"email": "new@example.com", "name": "Old",
                                                                  "age": 40})
    with pytest.raises(NotFound):
        vault.get_person("email", "old@example.com")
    vault.create_person({"email": "old@example.com"})  # the old address is free again


def test_json_patch_and_its_errors(vault: Vault) -> None:
    pid = vault.create_person({"login": "pat", "langs": ["en"]})
    vault.update_person("token", pid, [{"op": "add", "path": "/langs/-", "value": "fr"},
                                       {"op": "replace", "path": "/login", "value": "patricia"}])
    assert vault.get_person("login", "patricia")[1] == {"login": "patricia", "langs": ["en", "fr"]}
    with pytest.raises(BadInput, match="does not exist"):
        vault.update_person("token", pid, [{"op": "remove", "path": "/nope"}])
    with pytest.raises(BadInput, match="must remain"):
        vault.update_person("token", pid, [{"op": "remove", "path": "/login"}])
    assert vault.get_person("token", pid)[1]["login"] == "patricia"


def test_change_to_an_index_someone_else_holds_conflicts(vault: Vault) -> None:
    vault.create_person({"email": "taken@example.com"})
    pid = vault.create_person({"email": "mine@example.com"})
    with pytest.raises(Conflict, match="duplicate index: email"):
        vault.update_person("token", pid, {"email": "TAKEN@example.com"})
    vault.update_person("token", pid, {"email": "mine@example.com", "x": 1})  # keeping one's own is fine


def test_forget_me_shreds_the_data_key(vault: Vault) -> None:
    pid = vault.create_person({"email": "forget@example.com"})
    with vault.engine.connect() as conn:
        key_id = conn.execute(select(people_table.c.data_key_id).where(people_table.c.id == pid)).scalar_one()
    assert vault.forget_person("email", "forget@example.com") == pid
    with vault.engine.connect() as conn:
        assert conn.execute(select(data_keys_table.c.id).where(data_keys_table.c.id == key_id)).first() is None
        assert conn.execute(select(forgotten_table.c.person_id)).scalars().all() == [pid]
    with pytest.raises(NotFound):
        vault.get_person("token", pid)
    with pytest.raises(NotFound):
        vault.forget_person("token", pid)
    vault.create_person({"email": "forget@example.com"})  # a new person may use the address again


def _forget_racing(vault: Vault, pid: str, start: object, outcomes: list[str]) -> None:
    from vault.errors import NotFound

    start.wait()  # type: ignore[attr-defined]
    try:
        vault.forget_person("token", pid)
        outcomes.append("done")
    except NotFound:
        outcomes.append("not found")


@pytest.mark.pg_only
def test_two_replicas_forgetting_one_person_at_once(database_url: str, master_key: bytes) -> None:
    import threading

    first, second = Vault.open(database_url, master_key), Vault.open(database_url, master_key)
    try:
        for round_ in range(5):
            pid = first.create_person({"email": f"twice{round_}@example.com"})
            outcomes: list[str] = []
            start = threading.Barrier(2)
            threads = [threading.Thread(target=_forget_racing, args=(v, pid, start, outcomes))
                       for v in (first, second)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(outcomes) == ["done", "not found"], outcomes
    finally:
        first.close()
        second.close()
