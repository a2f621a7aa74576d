"""The audit rows the people and consent operations write: chained, named by actor, details sealed."""

from __future__ import annotations

from sqlalchemy import select

from vault import audit
from vault.core import FlowTokenize, Vault
from vault.models import audit_table, outbox_table
from vault.tokens import TokenRequest


def _rows(vault: Vault) -> list:  # type: ignore[type-arg]
    with vault.engine.connect() as conn:
        return list(conn.execute(select(audit_table).order_by(audit_table.c.seq)))


def test_people_operations_are_chained_in_the_audit_trail(vault: Vault) -> None:
    pid = vault.create_person({"email": "ann@example.com", "name": "Ann"}, by="root")
    vault.get_person("token", pid, by="xtoken:crm:1")
    vault.update_person("token", pid, {"name": "Anna"}, by="root")
    vault.give_consent("sms", "token", pid, by="root")
    vault.withdraw_consent("sms", "token", pid, by="root")
    vault.forget_person("token", pid, by="root")
    rows = _rows(vault)
    assert [r.action for r in rows] == ["create", "read", "change", "consent-give", "consent-withdraw", "forget"]
    assert {r.person_id for r in rows} == {pid}
    assert rows[1].actor == "xtoken:crm:1"
    prev = audit.GENESIS
    for row in rows:
        assert row.prev_hash == prev
        assert audit.link(vault.keyring, prev, row._asdict()) == row.row_hash
        prev = row.row_hash
    for row in rows:
        assert row.detail is None or b"Ann" not in row.detail  # sealed, never plain
    with vault.engine.connect() as conn:
        sent = [r.event for r in conn.execute(select(outbox_table).order_by(outbox_table.c.seq))]
    assert sent == ["profilenew", "profilechange", "consentchange", "consentchange", "forgetme"]


def test_api_reveals_are_audited_per_person(vault: Vault) -> None:
    pid = vault.create_person({"email": "bo@example.com"})
    [flow] = vault.tokenize_flows([FlowTokenize(("email", "bo@example.com"),
                                                [TokenRequest("bo@example.com", "email")])])
    assert not isinstance(flow, Exception) and flow.person == pid
    vault.detokenize_explained(flow.tokens, by="root", route="crm")
    [reveal] = [r for r in _rows(vault) if r.action == "reveal"]
    assert (reveal.person_id, reveal.route, reveal.status) == (pid, "crm", "ok")


def test_deleting_a_token_is_audited_and_unknown_actions_are_refused(vault: Vault) -> None:
    import pytest

    pid = vault.create_person({"email": "cy@example.com"})
    [flow] = vault.tokenize_flows([FlowTokenize(("email", "cy@example.com"), [TokenRequest("+441", "phone")])])
    assert not isinstance(flow, Exception)
    vault.delete_token(flow.tokens[0], by="root")
    [row] = [r for r in _rows(vault) if r.action == "token-delete"]
    assert (row.person_id, row.actor) == (pid, "root") and b"+441" not in (row.detail or b"")
    with pytest.raises(ValueError, match="unknown audit action"), vault.engine.begin() as conn:
        audit.record(conn, vault.keyring, vault.keys, audit.Event("root", "creat"), vault.now())
