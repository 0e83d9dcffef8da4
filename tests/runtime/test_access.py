"""API tokens: stored as digests, roles ordered, changes seen by a running store, a broken file lets nobody in."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.access import ApiRole, TokenStore, token_digest


def test_a_token_is_stored_only_as_its_digest_in_a_private_file(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "keys" / "api-tokens.json")
    token = store.add("line-3-camera", ApiRole.OPERATOR)
    assert token.startswith("fi_") and len(token) > 40
    text = store.path.read_text()
    assert token not in text and token_digest(token) in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    holder = store.holder(token)
    assert holder is not None and (holder.name, holder.role) == ("line-3-camera", ApiRole.OPERATOR)
    assert store.holder(token + "x") is None and store.holder("fi_" + "a" * 300) is None
    assert store.holder(token.removeprefix("fi_")) is None


def test_roles_are_ordered_viewer_operator_admin() -> None:
    assert ApiRole.ADMIN.allows(ApiRole.OPERATOR) and ApiRole.OPERATOR.allows(ApiRole.VIEWER)
    assert not ApiRole.VIEWER.allows(ApiRole.OPERATOR) and not ApiRole.OPERATOR.allows(ApiRole.ADMIN)


def test_a_running_store_sees_tokens_added_replaced_and_revoked_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "api-tokens.json"
    serving, admin = TokenStore(path), TokenStore(path)  # the API process and `fedinspect token`
    assert serving.holder("fi_nothing-yet") is None  # no file: nobody
    first = admin.add("anna", ApiRole.VIEWER)
    assert serving.holder(first) is not None
    second = admin.add("anna", ApiRole.ADMIN)  # a new token for a name replaces the old one
    assert serving.holder(first) is None
    held = serving.holder(second)
    assert held is not None and held.role == ApiRole.ADMIN
    third = admin.add("anna", ApiRole.ADMIN)  # the same size of file, likely within one timestamp tick
    assert serving.holder(second) is None and serving.holder(third) is not None
    assert admin.revoke("anna") and not admin.revoke("anna")
    assert serving.holder(third) is None
    assert [f.name for f in tmp_path.iterdir()] == ["api-tokens.json"], "no temporary file is left behind"


def test_a_broken_tokens_file_lets_nobody_in(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = TokenStore(tmp_path / "api-tokens.json")
    token = store.add("anna", ApiRole.ADMIN)
    entries = json.loads(store.path.read_text())
    entries["tokens"][0]["role"] = "root"
    store.path.write_text(json.dumps(entries))
    assert store.holder(token) is None
    assert "API tokens file unreadable" in caplog.text
    broken = store.path.read_text()
    with pytest.raises(ValueError, match="not an API tokens file"):
        store.add("bob", ApiRole.VIEWER)  # not overwritten with bob's token alone
    with pytest.raises(ValueError, match="not an API tokens file"):
        store.revoke("anna")
    assert store.path.read_text() == broken


def test_the_token_commands_add_list_and_revoke(tmp_path: Path) -> None:
    from fedinspect.cli import cli

    config = tmp_path / "hub.yaml"
    config.write_text(json.dumps({"data_dir": str(tmp_path / "hub")}))
    runner = CliRunner()
    added = runner.invoke(cli, ["token", "add", "hub", "dashboard", "--role", "viewer", "--config", str(config)])
    assert added.exit_code == 0, added.output
    token = added.stdout.splitlines()[0].strip()  # click < 8.2 mixes the note on stderr into stdout
    holder = TokenStore(tmp_path / "hub" / "api-tokens.json").holder(token)
    assert holder is not None and holder.role == ApiRole.VIEWER
    listed = runner.invoke(cli, ["token", "list", "hub", "--config", str(config)])
    assert listed.stdout == "dashboard\tviewer\n"
    bad = runner.invoke(cli, ["token", "add", "hub", "no spaces", "--role", "admin", "--config", str(config)])
    assert bad.exit_code == 2 and "letters, digits" in bad.output
    assert runner.invoke(cli, ["token", "revoke", "hub", "dashboard", "--config", str(config)]).exit_code == 0
    again = runner.invoke(cli, ["token", "revoke", "hub", "dashboard", "--config", str(config)])
    assert again.exit_code == 1 and "no token" in again.output
