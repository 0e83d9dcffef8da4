"""Plant set-up: Mosquitto from the shipped config with the plant CA, two enrolled edges and the hub."""

from __future__ import annotations

import getpass
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from fedinspect.cli import cli
from fedinspect.devbroker import find_mosquitto, free_port, start_mosquitto
from fedinspect.plant import Plant, enroll_edge, init_plant
from runtime.mqtt import MqttLink
from schemas.config import BrokerConfig, EdgeConfig, HttpConfig, HubConfig, TlsConfig, load_config
from schemas.errors import LinkNotConnectedError, PublishDeniedError
from schemas.messages import Role
from tests.support.recorder import MessageRecorder

pytestmark = pytest.mark.broker


def env_password(path: Path) -> str:
    return path.read_text().strip().split("=", 1)[1]


def new_plant(tmp_path: Path) -> Plant:
    """A plant with client certificates and two enrolled edges, edge-a and edge-b (no broker running yet)."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    plant = init_plant(
        tmp_path / "plant",
        ["localhost", "127.0.0.1"],
        tls_port=free_port(),
        local_port=free_port(),
        client_certificates=True,
    )
    enroll_edge(plant, "edge-a")
    enroll_edge(plant, "edge-b")
    return plant


def start_plant_broker(plant: Plant, tmp_path: Path) -> subprocess.Popen[bytes]:
    """Mosquitto from the shipped template rendered for ``plant``, as it reads its files now."""
    conf = plant.render_mosquitto_conf(
        run_as=getpass.getuser(),
        data_dir=tmp_path / "data",
        log_dest=f"file {tmp_path / 'mosquitto.log'}",
        tls_bind="127.0.0.1",
    )
    (tmp_path / "data").mkdir()
    binary = find_mosquitto()
    assert binary is not None
    return start_mosquitto(binary, conf, "127.0.0.1", plant.local_port, tmp_path / "mosquitto.log")


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Plant]:
    plant = new_plant(tmp_path)
    plant.add_hub_login("hub-watch")  # the tests' observer: the broker sets client ids to usernames
    process = start_plant_broker(plant, tmp_path)
    yield plant
    process.terminate()
    process.wait(10)


@pytest.fixture
def links() -> Iterator[Callable[..., MqttLink]]:
    made: list[MqttLink] = []

    def make(config: BrokerConfig, role: Role, node_id: str) -> MqttLink:
        link = MqttLink(config, role=role, node_id=node_id)
        made.append(link)
        link.start()
        return link

    yield make
    for link in made:
        link.stop(timeout=2)


def edge_config(plant: Plant, edge_id: str, **changes: Any) -> BrokerConfig:
    folder = plant.directory / "edges" / edge_id
    values: dict[str, Any] = {
        "host": "localhost",
        "port": plant.tls_port,
        "username": edge_id,
        "password": env_password(folder / "edge.env"),
        "reconnect_max_delay_s": 2,
        "tls": TlsConfig(
            ca_file=folder / "ca.crt", cert_file=folder / f"{edge_id}.crt", key_file=folder / f"{edge_id}.key"
        ),
    }
    values.update(changes)
    return BrokerConfig(**values)


def test_enrolled_edges_and_hub_connect_and_stay_in_their_lanes(plant: Plant, links: Callable[..., MqttLink]) -> None:
    hub_password = env_password(plant.hub_dir / "hub.env")
    # the broker sets client ids to usernames: an observer beside the hub needs a login of its own
    watch = env_password(plant.hub_dir / "hub-watch.env")
    hub_view = MessageRecorder("127.0.0.1", plant.local_port, "fedinspect/v1/#", username="hub-watch", password=watch)
    try:
        hub = links(BrokerConfig(port=plant.local_port, username="hub", password=hub_password), Role.HUB, "hub")
        edge_a = links(edge_config(plant, "edge-a"), Role.EDGE, "edge-a")
        edge_b = links(edge_config(plant, "edge-b"), Role.EDGE, "edge-b")
        for link in (hub, edge_a, edge_b):
            link.wait_connected(10)

        edge_a.publish(edge_a.topics.edge_events("edge-a"), b"{}").wait()
        hub_view.wait_for(edge_a.topics.edge_events("edge-a"))
        for forbidden in (
            edge_a.topics.edge_events("edge-b"),
            edge_a.topics.model_announce("det"),
            edge_a.topics.round("det"),
            edge_a.topics.hub_status(),
            edge_a.topics.edge_command("edge-a"),  # its own command topic: only the hub writes commands
            edge_a.topics.edge_update_status("edge-a", "t-1"),  # nor the hub's answers about its transfers
        ):
            with pytest.raises(PublishDeniedError) as caught:
                edge_a.publish(forbidden, b"{}").wait()
            assert caught.value.reason_code == 135
        hub.publish(hub.topics.model_announce("det"), b"{}").wait()  # the hub may
        assert hub_view.on_topic(edge_a.topics.edge_events("edge-b")) == []
    finally:
        hub_view.close()


def test_an_edge_cannot_take_over_another_edges_client_id(plant: Plant, links: Callable[..., MqttLink]) -> None:
    import time

    edge_a = links(edge_config(plant, "edge-a"), Role.EDGE, "edge-a")
    edge_a.wait_connected(10)
    # edge-b's own login, but edge-a's client id: without use_username_as_clientid the broker would drop edge-a
    impostor = links(edge_config(plant, "edge-b", client_id=edge_a.client_id), Role.EDGE, "edge-b")
    impostor.wait_connected(10)
    time.sleep(2)
    assert edge_a.connected and impostor.connected, impostor.last_error
    assert edge_a.stats.disconnects == 0 and edge_a.stats.connects == 1, "edge-a was never kicked off"


def test_a_hub_login_cannot_take_the_hubs_name_or_an_edges(plant: Plant) -> None:
    for taken in (plant.hub_id, "edge-a", "bad/name"):
        with pytest.raises(ValueError, match="login"):
            plant.add_hub_login(taken)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"username": "edge-x"}, "refused"),  # never enrolled
        ({"password": "wrong"}, "refused"),
        ({"tls": "no-client-cert"}, "TLS"),  # the broker requires a certificate from the plant CA
    ],
    ids=["unenrolled", "wrong-password", "no-client-certificate"],
)
def test_refused_clients(plant: Plant, links: Callable[..., MqttLink], changes: dict[str, Any], match: str) -> None:
    if changes.get("tls") == "no-client-cert":
        changes = {"tls": TlsConfig(ca_file=plant.mosquitto_dir / "ca.crt")}
    link = links(edge_config(plant, "edge-a", **changes), Role.EDGE, "edge-a")
    with pytest.raises(LinkNotConnectedError, match=match):
        link.wait_connected(3)


def test_secrets_are_private_and_configs_validate(plant: Plant) -> None:
    edge_dir = plant.directory / "edges" / "edge-a"
    for secret in (
        edge_dir / "edge.env",
        edge_dir / "keys" / "edge-a.key",
        edge_dir / "edge-a.key",
        plant.hub_dir / "hub.env",
        plant.hub_dir / "keys" / "hub.key",
        plant.mosquitto_dir / "passwd",
        plant.mosquitto_dir / "broker.key",
        plant.directory / "pki" / "ca.key",
    ):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert (plant.hub_dir / "keys" / "edges" / "edge-a.pub").exists()
    assert (edge_dir / "keys" / "hub.pub").read_bytes() == (plant.hub_dir / "keys" / "hub.pub").read_bytes()
    password = env_password(edge_dir / "edge.env")
    assert password not in (plant.mosquitto_dir / "passwd").read_text()  # only its hash
    env = {
        "FEDINSPECT__BROKER__PASSWORD": password,
        "FEDINSPECT__BROKER__TLS__CA_FILE": str(edge_dir / "ca.crt"),
        "FEDINSPECT__BROKER__TLS__CERT_FILE": str(edge_dir / "edge-a.crt"),
        "FEDINSPECT__BROKER__TLS__KEY_FILE": str(edge_dir / "edge-a.key"),
    }
    config = load_config(edge_dir / "edge.yaml", EdgeConfig, env=env)
    assert (config.edge_id, config.broker.username, config.broker.port) == ("edge-a", "edge-a", plant.tls_port)
    # the installer puts the edge's key and the hub's public key in /etc/fedinspect/keys (deploy/install.sh)
    assert config.training.signing_key_file == Path("/etc/fedinspect/keys/edge-a.key")
    assert (config.models.hub_keys_dir, config.models.hub_id) == (Path("/etc/fedinspect/keys"), plant.hub_id)
    hub_env = {"FEDINSPECT__BROKER__PASSWORD": env_password(plant.hub_dir / "hub.env")}
    assert load_config(plant.hub_dir / "hub.yaml", HubConfig, env=hub_env).broker.port == plant.local_port
    with pytest.raises(FileExistsError):
        enroll_edge(plant, "edge-a")
    with pytest.raises(ValueError, match="hub id"):
        enroll_edge(plant, "hub")


def test_cli(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["ca", "init", "--plant", str(tmp_path / "p"), "--broker-host", "broker.local"])
    assert result.exit_code == 0, result.output
    assert "listener 8883 0.0.0.0" in (tmp_path / "p" / "mosquitto" / "mosquitto.conf").read_text()
    result = runner.invoke(cli, ["enroll", "line-3", "--plant", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "edges" / "line-3" / "edge.yaml").exists()
    again = runner.invoke(cli, ["ca", "init", "--plant", str(tmp_path / "p"), "--broker-host", "x"])
    assert again.exit_code == 2 and "already holds a plant" in again.output
    missing = runner.invoke(cli, ["enroll", "e", "--plant", str(tmp_path)])
    assert missing.exit_code == 2 and "ca init" in missing.output


def test_shipped_config_passes_mosquitto_config_parsing(tmp_path: Path) -> None:
    """The rendered config is accepted by mosquitto itself (it exits on any unknown or bad option)."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    plant = init_plant(tmp_path / "plant", ["localhost"], tls_port=free_port(), local_port=free_port())
    (tmp_path / "data").mkdir()
    conf = plant.render_mosquitto_conf(
        run_as=getpass.getuser(), data_dir=tmp_path / "data", log_dest=f"file {tmp_path / 'm.log'}"
    )
    binary = find_mosquitto()
    assert binary is not None
    process = start_mosquitto(binary, conf, "127.0.0.1", plant.local_port, tmp_path / "m.log")
    process.terminate()
    assert process.wait(10) == 0  # started with every option accepted, stopped cleanly


def test_shipped_example_is_the_template_rendered_with_defaults(tmp_path: Path) -> None:
    plant = init_plant(tmp_path / "p", ["broker.plant.local"])
    rendered = plant.render_mosquitto_conf(
        run_as="mosquitto", data_dir=Path("/var/lib/mosquitto"), conf_dir=Path("/etc/fedinspect/mosquitto")
    ).read_text()
    example = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "mosquitto.conf.example"
    assert example.read_text() == rendered, "regenerate deploy/mosquitto/mosquitto.conf.example"


def test_a_revoked_edge_can_neither_connect_nor_sign_an_accepted_update(
    tmp_path: Path, links: Callable[..., MqttLink]
) -> None:
    from runtime.signing import KeyRing, SigningKey
    from schemas.errors import RejectedError
    from schemas.messages import CommandMessage, ReportStatusCommand

    plant = new_plant(tmp_path)
    runner = CliRunner()
    answer = runner.invoke(cli, ["revoke", "edge-b", "--plant", str(plant.directory)])
    assert answer.exit_code == 0, answer.output
    assert "client certificate serial" in answer.output and "update key" in answer.output
    graveyard = plant.directory / "edges" / ".revoked" / "edge-b"
    assert graveyard.is_dir() and not (plant.directory / "edges" / "edge-b").exists()
    # a stolen password alone no longer works: the login is gone; give edge-b a fresh one to show that its
    # revoked certificate alone is refused too (the CRL)
    password = plant.add_login("edge-b")
    process = start_plant_broker(plant, tmp_path)  # after the revocation: mosquitto reads its CRL at start
    try:
        good = links(edge_config(plant, "edge-a"), Role.EDGE, "edge-a")
        good.wait_connected(10)
        tls = TlsConfig(
            ca_file=graveyard / "ca.crt", cert_file=graveyard / "edge-b.crt", key_file=graveyard / "edge-b.key"
        )
        base = {
            "host": "localhost",
            "port": plant.tls_port,
            "username": "edge-b",
            "tls": tls,
            "reconnect_max_delay_s": 2,
        }
        old_password = env_password(graveyard / "edge.env")
        for attempt in (old_password, password):
            revoked = links(BrokerConfig(**base, password=attempt), Role.EDGE, "edge-b")
            with pytest.raises(LinkNotConnectedError):
                revoked.wait_connected(3)
            revoked.stop(timeout=2)
    finally:
        process.terminate()
        process.wait(10)
    # the hub no longer holds its update key: anything it signs is refused as from an unknown key
    ring = KeyRing.from_directory(plant.hub_dir / "keys" / "edges")
    assert "edge-a" in ring and "edge-b" not in ring
    signed = SigningKey.load(graveyard / "keys" / "edge-b.key").sign(
        CommandMessage(
            sender="edge-b", body=ReportStatusCommand(action="report_status", expires_at="2099-01-01T00:00:00Z")
        )
    )
    with pytest.raises(RejectedError, match="no trusted key for 'edge-b'"):
        ring.verify(signed, expected_signer="edge-b")
    assert runner.invoke(cli, ["revoke", "edge-b", "--plant", str(plant.directory)]).exit_code == 2


def verify_server_certificate(ca_file: Path, cert_file: Path, host: str) -> None:
    """Raises unless ``cert_file`` chains to the plant CA and names ``host``, as a browser checks it."""
    import ipaddress

    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store

    try:
        subject: x509.DNSName | x509.IPAddress = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    store = Store([x509.load_pem_x509_certificate(ca_file.read_bytes())])
    verifier = PolicyBuilder().store(store).build_server_verifier(subject)
    verifier.verify(x509.load_pem_x509_certificate(cert_file.read_bytes()), [])


def test_edges_and_the_hub_get_https_certificates_for_their_pages_from_the_plant_ca(tmp_path: Path) -> None:
    from datetime import timedelta

    from cryptography import x509
    from cryptography.x509.verification import VerificationError

    from runtime.web import pages_need_https

    plant = init_plant(
        tmp_path / "plant", ["broker.plant"], hub_web_hosts=["hub.plant", "10.0.0.5"], client_certificates=False
    )
    out = enroll_edge(plant, "line-3", web_hosts=["line-3.plant", "fd00::3"])
    ca_file = plant.directory / "pki" / "ca.crt"
    for folder, name, hosts, port in (
        (out, "line-3", ["line-3.plant", "fd00::3"], 8080),
        (plant.hub_dir, plant.hub_id, ["hub.plant", "10.0.0.5"], 8090),
    ):
        cert, key = folder / f"{name}-web.crt", folder / f"{name}-web.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        issued = x509.load_pem_x509_certificate(cert.read_bytes())
        assert issued.not_valid_after_utc - issued.not_valid_before_utc <= timedelta(days=398), "browsers' limit"
        for host in hosts:
            verify_server_certificate(ca_file, cert, host)
        with pytest.raises(VerificationError):
            verify_server_certificate(ca_file, cert, "other.plant")
        config_file = folder / ("edge.yaml" if name == "line-3" else "hub.yaml")
        http = yaml.safe_load(config_file.read_text())["http"]
        assert (http["host"], http["port"]) == ("::" if name == "line-3" else "0.0.0.0", port), "IPv6 too if named"
        assert http["tls_cert_file"] == f"/etc/fedinspect/{name}-web.crt"  # where deploy/install.sh puts it
        installed = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
        config = HttpConfig.model_validate(http | installed)
        assert config.https and pages_need_https(config)
        assert {*hosts[:1], "localhost"} <= set(config.trusted_hosts)
    edge_http = yaml.safe_load((out / "edge.yaml").read_text())["http"]
    assert "[fd00::3]" in edge_http["trusted_hosts"], "a browser sends an IPv6 address in brackets"
    with pytest.raises(ValueError, match="'bad host'"):
        enroll_edge(plant, "line-4", web_hosts=["bad host"])
    assert not (plant.directory / "edges" / "line-4").exists(), "a refused enrollment leaves nothing behind"


def test_cli_renews_a_web_certificate_and_refuses_a_bad_host_or_an_unknown_name(tmp_path: Path) -> None:
    runner = CliRunner()
    plant_dir = tmp_path / "p"
    assert runner.invoke(cli, ["ca", "init", "--plant", str(plant_dir), "--broker-host", "b"]).exit_code == 0
    assert runner.invoke(cli, ["enroll", "line-3", "--plant", str(plant_dir)]).exit_code == 0
    result = runner.invoke(cli, ["ca", "web-cert", "line-3", "--plant", str(plant_dir), "--host", "line-3.plant"])
    assert result.exit_code == 0, result.output
    assert "tls_cert_file: /etc/fedinspect/line-3-web.crt" in result.output
    verify_server_certificate(
        plant_dir / "pki" / "ca.crt", plant_dir / "edges" / "line-3" / "line-3-web.crt", "line-3.plant"
    )
    bad = runner.invoke(cli, ["ca", "web-cert", "line-3", "--plant", str(plant_dir), "--host", "a/b"])
    assert bad.exit_code == 2 and "'a/b'" in bad.output
    for name in ("line-9", "../mosquitto"):
        unknown = runner.invoke(cli, ["ca", "web-cert", name, "--plant", str(plant_dir), "--host", "x.plant"])
        assert unknown.exit_code == 2 and name in unknown.output
    assert not list((plant_dir / "mosquitto").glob("*-web.*")), "nothing written outside the edges' folders"
