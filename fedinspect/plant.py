"""Plant set-up: the CA, the broker's credentials and config, the hub's keys, and enrolling edges.

    fedinspect ca init --plant DIR --broker-host broker.plant.local
    fedinspect enroll line-3 --plant DIR

``ca init`` writes DIR/mosquitto/ (ca.crt, broker.crt/.key, passwd, acl, and mosquitto.conf rendered from
fedinspect/templates/mosquitto.conf.template; deploy/mosquitto/mosquitto.conf.example shows the result) and
DIR/hub/ (the hub's signing key, enrolled-edge key directory, MQTT password in hub.env, hub.yaml).
``enroll EDGE_ID`` adds the edge's MQTT login to passwd, its Ed25519
public key to the hub's enrolled keys, and writes DIR/edges/EDGE_ID/ with everything that box needs:
edge.yaml, edge.env (its MQTT password, mode 0600), its signing key, the CA certificate, the pinned hub key
and, with client certificates on, its TLS client certificate.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import secrets
import shutil
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fedinspect.pki import CertificateAuthority
from runtime.signing import generate_key_pair, write_secret_file
from schemas.base import IDENTIFIER_PATTERN
from schemas.config import EdgeConfig, HttpConfig, HubConfig
from schemas.topics import DEFAULT_TOPIC_PREFIX

TEMPLATE = resources.files("fedinspect") / "templates" / "mosquitto.conf.template"  # package data: works installed
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes for its $7$ (PBKDF2-SHA512) hashes


def mosquitto_password_hash(password: str) -> str:
    """A mosquitto 2 password file hash ($7$: PBKDF2-HMAC-SHA512, 12-byte salt, 64-byte digest)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS, 64)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl_text(prefix: str, hub_user: str) -> str:
    """Each edge writes only under its own prefix and reads what is addressed to it; only the hub writes
    model/, round/ and hub/."""
    return "\n".join(
        [
            f"# fedinspect ACL for prefix {prefix}; %u is the login name (= the edge id).",
            # edge -> hub topics only: an edge cannot write its own command topic or its transfers' statuses
            f"pattern write {prefix}/edge/%u/status",
            f"pattern write {prefix}/edge/%u/events",
            f"pattern write {prefix}/edge/%u/cmd/ack",
            f"pattern write {prefix}/edge/%u/update/+",
            f"pattern write {prefix}/edge/%u/fetch",
            f"pattern read {prefix}/edge/%u/cmd",
            f"pattern read {prefix}/edge/%u/images",
            f"pattern read {prefix}/edge/%u/update/+/status",
            f"pattern read {prefix}/edge/%u/model/#",
            f"pattern read {prefix}/model/#",
            f"pattern read {prefix}/round/#",
            f"pattern read {prefix}/hub/status",
            f"user {hub_user}",
            f"topic readwrite {prefix}/#",
            "",
        ]
    )


@dataclass(frozen=True)
class Plant:
    directory: Path
    broker_hosts: list[str]
    tls_port: int
    local_port: int
    prefix: str
    client_certificates: bool
    hub_id: str

    @property
    def mosquitto_dir(self) -> Path:
        return self.directory / "mosquitto"

    @property
    def hub_dir(self) -> Path:
        return self.directory / "hub"

    @classmethod
    def load(cls, directory: Path) -> Plant:
        try:
            state = json.loads((directory / "plant.json").read_text())
        except OSError:
            raise FileNotFoundError(f"{directory} is not a plant directory: run `fedinspect ca init` first") from None
        return cls(directory=directory, **state)

    def save(self) -> None:
        state = {
            "broker_hosts": self.broker_hosts,
            "tls_port": self.tls_port,
            "local_port": self.local_port,
            "prefix": self.prefix,
            "client_certificates": self.client_certificates,
            "hub_id": self.hub_id,
        }
        (self.directory / "plant.json").write_text(json.dumps(state, indent=2) + "\n")

    def add_hub_login(self, username: str) -> Path:
        """A further login with the hub's broker rights, for a second hub worker or an operator's tools: the broker
        sets client ids to usernames, so two processes sharing the hub's login would keep kicking each other off.
        Writes DIR/hub/USERNAME.env (its password, mode 0600) and returns it."""
        if not re.match(IDENTIFIER_PATTERN, username) or username == self.hub_id:
            raise ValueError(f"login {username!r} is invalid: expected {IDENTIFIER_PATTERN}, not the hub id")
        if (self.directory / "edges" / username).exists():
            raise ValueError(f"login {username!r} is an enrolled edge's")
        password = self.add_login(username)
        acl = self.mosquitto_dir / "acl"
        text = acl.read_text()
        section = f"user {username}\ntopic readwrite {self.prefix}/#\n"
        if section not in text:
            acl.write_text(text + section)
        env = self.hub_dir / f"{username}.env"
        write_secret_file(env, f"FEDINSPECT__BROKER__PASSWORD={password}\n".encode())
        return env

    def add_login(self, username: str) -> str:
        """Create (or replace) an MQTT login; returns the new random password."""
        password = secrets.token_urlsafe(24)
        passwd = self.mosquitto_dir / "passwd"
        lines = [line for line in passwd.read_text().splitlines() if line and not line.startswith(f"{username}:")]
        lines.append(f"{username}:{mosquitto_password_hash(password)}")
        write_secret_file(passwd, ("\n".join(lines) + "\n").encode())
        return password

    def render_mosquitto_conf(
        self,
        *,
        run_as: str,
        data_dir: Path,
        log_dest: str = "syslog",
        conf_dir: Path | None = None,
        tls_bind: str = "0.0.0.0",  # noqa: S104 (edges reach the broker over the plant network)
    ) -> Path:
        """Write mosquitto.conf from the template (``conf_dir``: where the files live on the broker host)."""
        crl = self.mosquitto_dir / "crl.pem"
        if not crl.exists():  # plants made before revocation existed: mosquitto needs the file to start
            crl.write_bytes(CertificateAuthority.load(self.directory / "pki").revocation_list([]))
        text = string.Template(TEMPLATE.read_text()).substitute(
            CONF_DIR=str(conf_dir or self.mosquitto_dir),
            RUN_AS=run_as,
            TLS_PORT=self.tls_port,
            TLS_BIND=tls_bind,
            LOCAL_PORT=self.local_port,
            REQUIRE_CERTIFICATE="true" if self.client_certificates else "false",
            DATA_DIR=str(data_dir),
            LOG_DEST=log_dest,
        )
        path = self.mosquitto_dir / "mosquitto.conf"
        path.write_text(text)
        return path


WEB_CERTIFICATE_DAYS = 397
"""Browsers refuse TLS server certificates valid for longer (Apple's platforms: 398 days at most)."""
INSTALLED_DIR = Path("/etc/fedinspect")
"""Where deploy/install.sh puts an edge's or the hub's folder: the configs name their files there."""


HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def default_http_port(*, hub: bool) -> int:
    """The HTTP port the hub (or an edge) listens on by default."""
    config = HubConfig if hub else EdgeConfig
    http: HttpConfig = config.model_fields["http"].get_default(call_default_factory=True)
    return http.port


def _ip_version(host: str) -> int | None:
    """4 or 6 for an IP address, None for a host name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def check_web_hosts(name: str, hosts: list[str]) -> None:
    """Raises ValueError when ``name`` is not an edge or hub id (it names the files written), or naming the first
    of ``hosts`` that is neither a host name nor an IP address."""
    if not re.fullmatch(IDENTIFIER_PATTERN, name):
        raise ValueError(f"{name!r} is not an edge or hub id (expected {IDENTIFIER_PATTERN})")
    if not hosts:
        raise ValueError(f"{name}: an HTTPS certificate needs at least one host name or address operators use")
    for host in hosts:
        if _ip_version(host) is None and not HOST_NAME.fullmatch(host):
            raise ValueError(f"{name}: {host!r} is neither a host name nor an IP address")


def issue_web_certificate(plant: Plant, name: str, hosts: list[str], out_dir: Path, *, port: int) -> dict[str, Any]:
    """An HTTPS certificate from the plant CA for the web pages and API of ``name`` (an edge or the hub), valid for
    ``hosts`` (the names and addresses operators' browsers use) for ``WEB_CERTIFICATE_DAYS``, written to ``out_dir``
    as NAME-web.crt / .key; returns the ``http`` config section that serves them there once installed: bound beyond
    loopback on ``port`` (all IPv4 addresses, or IPv6 and IPv4 when a host is an IPv6 address), those hosts
    trusted, HTTPS only."""
    check_web_hosts(name, hosts)
    pair = CertificateAuthority.load(plant.directory / "pki").issue(
        f"{name}-web", server=True, hosts=list(hosts), out_dir=out_dir, valid_days=WEB_CERTIFICATE_DAYS
    )
    ipv6 = {h for h in hosts if _ip_version(h) == 6}
    # as a browser writes each host in the Host header (without the port): IPv6 addresses in brackets
    as_sent = [f"[{h}]" if h in ipv6 else h for h in hosts]
    trusted = list(dict.fromkeys([*as_sent, "localhost", "127.0.0.1", "[::1]"]))
    return {
        # operators open the pages from their own PCs, over HTTPS only; "::" also takes IPv4 on Linux
        "host": "::" if ipv6 else "0.0.0.0",  # noqa: S104
        "port": port,
        "trusted_hosts": trusted,
        "tls_cert_file": str(INSTALLED_DIR / pair.cert_file.name),
        "tls_key_file": str(INSTALLED_DIR / pair.key_file.name),
    }


def init_plant(
    directory: Path,
    broker_hosts: list[str],
    *,
    tls_port: int = 8883,
    local_port: int = 1883,
    prefix: str = DEFAULT_TOPIC_PREFIX,
    client_certificates: bool = False,
    hub_id: str = "hub",
    hub_web_hosts: list[str] | None = None,
) -> Plant:
    """Create the plant CA, the broker's certificate and config, and the hub's keys and login; with
    ``hub_web_hosts``, an HTTPS certificate for the hub's pages and API (``issue_web_certificate``) too."""
    if (directory / "plant.json").exists():
        raise FileExistsError(f"{directory} already holds a plant; enroll edges with `fedinspect enroll`")
    if hub_web_hosts:
        check_web_hosts(hub_id, hub_web_hosts)
    plant = Plant(directory, broker_hosts, tls_port, local_port, prefix, client_certificates, hub_id)
    ca = CertificateAuthority.create(directory / "pki")
    mosquitto = plant.mosquitto_dir
    mosquitto.mkdir(parents=True, exist_ok=True)
    server = ca.issue("broker", server=True, hosts=broker_hosts, out_dir=mosquitto)
    shutil.copyfile(ca.ca_file, mosquitto / "ca.crt")
    assert server.cert_file.name == "broker.crt"
    write_secret_file(mosquitto / "passwd", b"")
    (mosquitto / "acl").write_text(acl_text(prefix, hub_id))
    (mosquitto / "crl.pem").write_bytes(ca.revocation_list([]))
    hub = plant.hub_dir
    generate_key_pair(hub_id, hub / "keys")
    (hub / "keys" / "edges").mkdir(parents=True, exist_ok=True)
    password = plant.add_login(hub_id)
    write_secret_file(hub / "hub.env", f"FEDINSPECT__BROKER__PASSWORD={password}\n".encode())
    hub_yaml = {
        "hub_id": hub_id,
        "data_dir": "/var/lib/fedinspect/hub",
        "signing_key_file": f"/etc/fedinspect/keys/{hub_id}.key",
        "enrolled_keys_dir": "/etc/fedinspect/keys/edges",
        "broker": {"host": "127.0.0.1", "port": local_port, "username": hub_id, "topic_prefix": prefix},
    }
    if hub_web_hosts:
        hub_yaml["http"] = issue_web_certificate(plant, hub_id, hub_web_hosts, hub, port=default_http_port(hub=True))
    (hub / "hub.yaml").write_text(yaml.safe_dump(hub_yaml, sort_keys=False))
    plant.save()
    return plant


REVOKED_FILE = "revoked.json"
"""In the plant directory: every revoked edge with its certificate serial, so the CRL can always be rebuilt."""


def revoke_edge(plant: Plant, edge_id: str) -> list[str]:
    """Take back everything that let ``edge_id`` in: its broker login (passwd), its update key enrolled with the
    hub, and its TLS client certificate (added to the CA's revocation list, mosquitto/crl.pem). Its folder moves to
    edges/.revoked/, so the id cannot be enrolled again by mistake with the old files. Returns what was done; the
    broker must reload (passwd) and restart (CRL), the hub restart (enrolled keys)."""
    from cryptography import x509

    folder = plant.directory / "edges" / edge_id
    if not re.match(IDENTIFIER_PATTERN, edge_id) or not folder.is_dir():
        raise ValueError(f"{edge_id!r} is not an enrolled edge of {plant.directory}")
    done = []
    passwd = plant.mosquitto_dir / "passwd"
    lines = passwd.read_text().splitlines()
    kept = [line for line in lines if line and not line.startswith(f"{edge_id}:")]
    write_secret_file(passwd, ("\n".join(kept) + "\n").encode() if kept else b"")
    if len(kept) != len([line for line in lines if line]):
        done.append(f"broker login {edge_id} removed from {passwd}")
    enrolled = plant.hub_dir / "keys" / "edges" / f"{edge_id}.pub"
    if enrolled.exists():
        enrolled.unlink()
        done.append(f"update key {enrolled} removed")
    revoked_file = plant.directory / REVOKED_FILE
    revoked: dict[str, int] = json.loads(revoked_file.read_text()) if revoked_file.exists() else {}
    certificate = folder / f"{edge_id}.crt"
    if certificate.exists():
        revoked[edge_id] = x509.load_pem_x509_certificate(certificate.read_bytes()).serial_number
        done.append(f"client certificate serial {revoked[edge_id]:x} revoked")
    else:
        revoked.setdefault(edge_id, 0)
    revoked_file.write_text(json.dumps(revoked, indent=2) + "\n")
    crl = CertificateAuthority.load(plant.directory / "pki").revocation_list([s for s in revoked.values() if s])
    (plant.mosquitto_dir / "crl.pem").write_bytes(crl)
    graveyard = plant.directory / "edges" / ".revoked"
    graveyard.mkdir(exist_ok=True)
    shutil.rmtree(graveyard / edge_id, ignore_errors=True)
    folder.replace(graveyard / edge_id)
    return done


def enroll_edge(
    plant: Plant, edge_id: str, *, broker_host: str | None = None, web_hosts: list[str] | None = None
) -> Path:
    """Give ``edge_id`` an MQTT login, a signing key enrolled with the hub, and a ready config folder; with
    ``web_hosts``, an HTTPS certificate for its operator pages and API (``issue_web_certificate``) too."""
    if not re.match(IDENTIFIER_PATTERN, edge_id) or edge_id == plant.hub_id:
        raise ValueError(f"edge id {edge_id!r} is invalid: expected {IDENTIFIER_PATTERN}, not the hub id")
    out = plant.directory / "edges" / edge_id
    if out.exists():
        raise FileExistsError(f"{edge_id} is already enrolled ({out}); remove that folder to enroll it again")
    if web_hosts:
        check_web_hosts(edge_id, web_hosts)
    out.mkdir(parents=True)
    _, public = generate_key_pair(edge_id, out / "keys")
    shutil.copyfile(public, plant.hub_dir / "keys" / "edges" / f"{edge_id}.pub")
    shutil.copyfile(plant.hub_dir / "keys" / f"{plant.hub_id}.pub", out / "keys" / f"{plant.hub_id}.pub")
    shutil.copyfile(plant.mosquitto_dir / "ca.crt", out / "ca.crt")
    tls: dict[str, str] = {"ca_file": "/etc/fedinspect/ca.crt"}
    if plant.client_certificates:
        CertificateAuthority.load(plant.directory / "pki").issue(edge_id, server=False, out_dir=out)
        tls |= {"cert_file": f"/etc/fedinspect/{edge_id}.crt", "key_file": f"/etc/fedinspect/{edge_id}.key"}
    password = plant.add_login(edge_id)
    write_secret_file(out / "edge.env", f"FEDINSPECT__BROKER__PASSWORD={password}\n".encode())
    edge_yaml = {
        "edge_id": edge_id,
        "data_dir": "/var/lib/fedinspect/edge",
        "broker": {
            "host": broker_host or plant.broker_hosts[0],
            "port": plant.tls_port,
            "username": edge_id,
            "topic_prefix": plant.prefix,
            "tls": tls,
        },
        # Global models must carry the hub's signature; local training signs its updates with the edge's key.
        "models": {"hub_keys_dir": "/etc/fedinspect/keys", "hub_id": plant.hub_id},
        "training": {"signing_key_file": f"/etc/fedinspect/keys/{edge_id}.key"},
    }
    if web_hosts:
        edge_yaml["http"] = issue_web_certificate(plant, edge_id, web_hosts, out, port=default_http_port(hub=False))
    (out / "edge.yaml").write_text(yaml.safe_dump(edge_yaml, sort_keys=False))
    return out
