"""The ``fedinspect`` command line. Subcommands import their heavy modules lazily, inside the command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import click

from fedinspect import __version__

if TYPE_CHECKING:
    from fedinspect.demo_data import PlantData


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """fedinspect: federated visual defect inspection (edge agents, hub, exporters)."""


@cli.command()
def version() -> None:
    """Print the fedinspect version and the wire contract version."""
    from schemas import SCHEMA_VERSION

    click.echo(f"fedinspect {__version__} (wire contract v{SCHEMA_VERSION})")


@cli.group()
def schemas() -> None:
    """The wire contract as JSON Schema."""


@schemas.command("export")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def schemas_export(directory: Path) -> None:
    """Write one JSON Schema per message, manifest and config type into DIRECTORY."""
    from schemas.jsonschema import export_json_schemas

    for path in export_json_schemas(directory):
        click.echo(str(path))


def _load(kind: str, path: Path) -> object:
    from schemas.config import EdgeConfig, HubConfig, load_config
    from schemas.errors import ConfigError

    try:
        return load_config(path, EdgeConfig if kind == "edge" else HubConfig)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@cli.group()
def config() -> None:
    """Configuration files."""


@config.command("check")
@click.argument("kind", type=click.Choice(["edge", "hub"]))
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
def config_check(kind: str, path: Path) -> None:
    """Validate an edge.yaml or hub.yaml (with FEDINSPECT__ environment overrides applied)."""
    _load(kind, path)
    click.echo(f"{path}: valid {kind} configuration")


class _Service(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


def _run_until_signalled(service: _Service) -> None:
    """Run a hub or edge service in the foreground; SIGTERM (systemd) and Ctrl-C stop it gracefully."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop())
    service.run()


@cli.group()
def hub() -> None:
    """The hub: federated rounds, aggregation, model registry."""


@hub.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
def hub_run(config_path: Path) -> None:
    """Run the hub until SIGTERM or Ctrl-C."""
    from hub.service import HubService
    from runtime.logs import configure_logging
    from schemas.config import HubConfig
    from schemas.errors import FedinspectError

    config = _load("hub", config_path)
    assert isinstance(config, HubConfig)
    configure_logging(config.logging)
    try:
        service = HubService(config)
    except FedinspectError as exc:  # e.g. a database from a newer release
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    _run_until_signalled(service)


@hub.command("migrate")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
def hub_migrate(config_path: Path) -> None:
    """Upgrade the hub's database to this release's schema (`hub run` does it too) and say from which revision.

    Back the database up first: a migration only goes forward.
    """
    from hub.db import hub_database_engine, schema_revision, upgrade_hub_database
    from schemas.config import HubConfig
    from schemas.errors import FedinspectError

    config = _load("hub", config_path)
    assert isinstance(config, HubConfig)
    engine = hub_database_engine(config)
    where = engine.url.render_as_string(hide_password=True)
    before = schema_revision(engine)
    try:
        after = upgrade_hub_database(engine)
    except FedinspectError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if before == after:
        click.echo(f"{where}: at schema revision {after}, the newest; nothing to do")
    else:
        click.echo(f"{where}: upgraded from schema revision {before or 'none (before migrations)'} to {after}")


@cli.group()
def edge() -> None:
    """The edge agent: inspection, buffer, events, health."""


@edge.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
def edge_run(config_path: Path) -> None:
    """Run the edge agent until SIGTERM or Ctrl-C."""
    from edge.service import EdgeService
    from runtime.logs import configure_logging
    from schemas.config import EdgeConfig
    from schemas.errors import FedinspectError

    config = _load("edge", config_path)
    assert isinstance(config, EdgeConfig)
    configure_logging(config.logging)
    try:
        service = EdgeService(config)
    except FedinspectError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    try:
        _run_until_signalled(service)
    except OSError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@cli.group()
def token() -> None:
    """API tokens of an edge's or the hub's HTTP API (roles viewer, operator, admin)."""


def _token_store(kind: str, config_path: Path) -> Any:
    from runtime.access import TokenStore, api_tokens_file
    from schemas.config import EdgeConfig, HubConfig

    config = _load(kind, config_path)
    assert isinstance(config, EdgeConfig | HubConfig)
    return TokenStore(api_tokens_file(config.http, config.data_dir))


@token.command("add")
@click.argument("kind", type=click.Choice(["edge", "hub"]))
@click.argument("name")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--role",
    type=click.Choice(["viewer", "operator", "admin"]),
    required=True,
    help="viewer: read; operator: inspect, label, import, train now; admin: also roll back, pin, reconfigure.",
)
def token_add(kind: str, name: str, config_path: Path, role: str) -> None:
    """Make a token for NAME (a person, a camera, a script) and print it once; a running process accepts it at
    once. NAME's previous token, if any, stops working."""
    from pydantic import TypeAdapter, ValidationError

    from runtime.access import ApiRole
    from schemas.base import Identifier

    try:
        TypeAdapter(Identifier).validate_python(name)
    except ValidationError:
        raise click.BadParameter(f"{name!r}: letters, digits, '.', '_' and '-' only", param_hint="NAME") from None
    store = _token_store(kind, config_path)
    try:
        token = store.add(name, ApiRole(role))
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(token)
    click.echo(f"{name} ({role}) added to {store.path}; send it as 'Authorization: Bearer <token>'", err=True)


@token.command("revoke")
@click.argument("kind", type=click.Choice(["edge", "hub"]))
@click.argument("name")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
def token_revoke(kind: str, name: str, config_path: Path) -> None:
    """Take NAME's token back (a running process refuses it from the next request)."""
    store = _token_store(kind, config_path)
    try:
        revoked = store.revoke(name)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if not revoked:
        click.echo(f"{name}: no token in {store.path}", err=True)
        sys.exit(1)
    click.echo(f"{name}: token revoked")


@token.command("list")
@click.argument("kind", type=click.Choice(["edge", "hub"]))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
def token_list(kind: str, config_path: Path) -> None:
    """Who holds a token, and with which role."""
    for name, role in _token_store(kind, config_path).names():
        click.echo(f"{name}\t{role.value}")


@hub.command("import-model")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
def hub_import_model(config_path: Path, source: Path, weights: Path | None) -> None:
    """Register version 0 of a model line.

    SOURCE is a bundle directory from `fedinspect export` (manifest.json, weights.safetensors, model.onnx: the hub
    then exports ONNX for every later version), or a manifest.json followed by its WEIGHTS (.safetensors).
    """
    from hub.model_import import import_model
    from schemas.config import HubConfig
    from schemas.errors import FedinspectError

    config = _load("hub", config_path)
    assert isinstance(config, HubConfig)
    try:
        version = import_model(config, source, weights)
    except (ValueError, OSError, FedinspectError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"registered version {version}")


@cli.group()
def ca() -> None:
    """The plant's certificate authority and broker set-up."""


@ca.command("init")
@click.option(
    "--plant",
    "plant_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for the plant's CA, broker and hub files (keep it safe: it holds the CA key).",
)
@click.option(
    "--broker-host",
    "hosts",
    multiple=True,
    required=True,
    help="Name or IP address edges use to reach the broker (repeat for several).",
)
@click.option("--tls-port", type=click.IntRange(1, 65535), default=8883, show_default=True)
@click.option(
    "--local-port",
    type=click.IntRange(1, 65535),
    default=1883,
    show_default=True,
    help="Plain loopback listener for the hub on the broker host.",
)
@click.option(
    "--client-certificates/--no-client-certificates",
    default=False,
    show_default=True,
    help="Edges also authenticate with a certificate from the plant CA.",
)
@click.option("--hub-id", default="hub", show_default=True)
@click.option(
    "--hub-web-host",
    "hub_web_hosts",
    multiple=True,
    help="Name or IP address operators' browsers use for the hub's pages (repeat for several): the hub gets an "
    "HTTPS certificate from the plant CA and hub.yaml serves its pages and API over HTTPS beyond loopback.",
)
def ca_init(
    plant_dir: Path,
    hosts: tuple[str, ...],
    tls_port: int,
    local_port: int,
    client_certificates: bool,
    hub_id: str,
    hub_web_hosts: tuple[str, ...],
) -> None:
    """Create the plant CA, the broker's certificate, password file, ACL and config, and the hub's keys."""
    import getpass

    from fedinspect.plant import init_plant

    try:
        plant = init_plant(
            plant_dir,
            list(hosts),
            tls_port=tls_port,
            local_port=local_port,
            client_certificates=client_certificates,
            hub_id=hub_id,
            hub_web_hosts=list(hub_web_hosts),
        )
    except (FileExistsError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    plant.render_mosquitto_conf(
        run_as="mosquitto", data_dir=Path("/var/lib/mosquitto"), conf_dir=Path("/etc/fedinspect/mosquitto")
    )
    click.echo(f"plant created in {plant_dir} (by {getpass.getuser()})")
    click.echo(f"  broker: copy {plant.mosquitto_dir} to /etc/fedinspect/mosquitto on the broker host")
    click.echo(f"  hub:    {plant.hub_dir} (hub.yaml, hub.env, keys/)")
    click.echo("  edges:  fedinspect enroll EDGE_ID --plant " + str(plant_dir))


@ca.command("hub-login")
@click.argument("username")
@click.option("--plant", "plant_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
def ca_hub_login(username: str, plant_dir: Path) -> None:
    """A further broker login with the hub's rights (a second hub worker, an operator's tools): the broker sets
    client ids to usernames, so each process needs a login of its own."""
    from fedinspect.plant import Plant

    try:
        env = Plant.load(plant_dir).add_hub_login(username)
    except (FileNotFoundError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"login {username}: password in {env}; reload the broker: systemctl reload fedinspect-mosquitto")


@ca.command("web-cert")
@click.argument("name")
@click.option("--plant", "plant_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--host", "hosts", multiple=True, required=True, help="Name or IP address browsers use (repeatable).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to write NAME-web.crt and NAME-web.key (default: the edge's folder, or the hub's for the hub id).",
)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="HTTP port (default: the process's).")
def ca_web_cert(name: str, plant_dir: Path, hosts: tuple[str, ...], out_dir: Path | None, port: int | None) -> None:
    """Issue (or renew) the HTTPS certificate of an edge's or the hub's pages and API from the plant CA, and print
    the http: section of its config that serves them."""
    import yaml

    from fedinspect.plant import Plant, check_web_hosts, default_http_port, issue_web_certificate

    try:
        plant = Plant.load(plant_dir)
        check_web_hosts(name, list(hosts))  # before the name picks a folder
        is_hub = name == plant.hub_id
        folder = out_dir or (plant.hub_dir if is_hub else plant.directory / "edges" / name)
        if out_dir is None and not folder.is_dir():
            raise ValueError(f"{name} is neither the hub ({plant.hub_id}) nor an enrolled edge of {plant_dir}")
        http = issue_web_certificate(plant, name, list(hosts), folder, port=port or default_http_port(hub=is_hub))
    except (FileNotFoundError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"HTTPS certificate for {name} in {folder}; install it in /etc/fedinspect and set in its config:")
    click.echo(yaml.safe_dump({"http": http}, sort_keys=False).rstrip())


@cli.command()
@click.argument("edge_id")
@click.option("--plant", "plant_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--broker-host", default=None, help="Broker address for this edge (default: the first of ca init).")
@click.option(
    "--web-host",
    "web_hosts",
    multiple=True,
    help="Name or IP address operators' browsers use for this edge's pages (repeat for several): the edge gets an "
    "HTTPS certificate from the plant CA and edge.yaml serves its pages and API over HTTPS beyond loopback.",
)
def enroll(edge_id: str, plant_dir: Path, broker_host: str | None, web_hosts: tuple[str, ...]) -> None:
    """Enroll an edge: MQTT login, signing key enrolled with the hub, and its config folder."""
    from fedinspect.plant import Plant, enroll_edge

    try:
        out = enroll_edge(Plant.load(plant_dir), edge_id, broker_host=broker_host, web_hosts=list(web_hosts))
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"enrolled {edge_id}: copy {out} to /etc/fedinspect on that box (edge.env holds its password)")
    click.echo("reload the broker so it reads the new password file: systemctl reload fedinspect-mosquitto")


@cli.command()
@click.argument("edge_id")
@click.option("--plant", "plant_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
def revoke(edge_id: str, plant_dir: Path) -> None:
    """Revoke an edge: its broker login, its update key enrolled with the hub, its TLS client certificate (CRL)."""
    from fedinspect.plant import Plant, revoke_edge

    try:
        done = revoke_edge(Plant.load(plant_dir), edge_id)
    except (FileNotFoundError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for line in done:
        click.echo(f"  {line}")
    click.echo(
        f"revoked {edge_id}. Install {plant_dir}/mosquitto/passwd and crl.pem on the broker host and restart it "
        "(systemctl restart fedinspect-mosquitto: the CRL is read at start); remove "
        f"/etc/fedinspect/keys/edges/{edge_id}.pub on the hub host and restart the hub."
    )


@cli.group()
def keys() -> None:
    """Ed25519 signing keys (hub: signs models; edge: signs updates)."""


@keys.command("new")
@click.argument("key_id")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(),
    show_default=True,
    help="Where to write KEY_ID.key (mode 0600) and KEY_ID.pub.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing key pair (the old key stops working).")
def keys_new(key_id: str, directory: Path, force: bool) -> None:
    """Create an Ed25519 key pair named KEY_ID (the edge id, or the hub id)."""
    from runtime.signing import KeyFileError, generate_key_pair

    try:
        private, public = generate_key_pair(key_id, directory, overwrite=force)
    except KeyFileError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"private key: {private}  (keep secret; mode 0600)")
    click.echo(f"public key:  {public}  (give to the hub to enroll, or pin on edges for the hub key)")


@cli.command()
@click.option(
    "--data",
    "source",
    type=click.Choice(["synthetic", "deeppcb"]),
    default="synthetic",
    show_default=True,
    help="Generated boards, or DeepPCB (give its folder as PATH); plants are board styles or DeepPCB groups.",
)
@click.argument("path", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--rounds", type=click.IntRange(1, 50), default=4, show_default=True, help="Federated rounds.")
@click.option("--plants", type=click.IntRange(2, 6), default=3, show_default=True, help="Edge agents / plants.")
@click.option(
    "--boards",
    type=click.IntRange(4, 2000),
    default=80,
    show_default=True,
    help="Training boards per plant (synthetic).",
)
@click.option(
    "--detector-epochs",
    type=click.IntRange(1, 300),
    default=12,
    show_default=True,
    help="Seed training of the served YOLOv8n detector (--no-templates).",
)
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"), show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--templates/--no-templates",
    default=True,
    show_default=True,
    help="Both models compare each board with its golden template (edges get inspection.templates_dir) and both "
    "are federated; without: a MobileNetV2 classifier is federated and a seed YOLOv8n detector served.",
)
@click.option(
    "--kinds-per-plant",
    type=click.IntRange(1, 6),
    default=4,
    show_default=True,
    help="Each plant's training boards hold only this many of the 6 defect kinds; test boards hold them all.",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="After the report, keep the hub and the edges running with their pages open until Ctrl-C.",
)
def demo(
    source: str,
    path: Path | None,
    rounds: int,
    plants: int,
    boards: int,
    detector_epochs: int,
    out_dir: Path,
    seed: int,
    templates: bool,
    kinds_per_plant: int,
    keep_running: bool,
) -> None:
    """The whole system on this machine: a broker, a hub and PLANTS edge agents run federated rounds on
    generated boards (or DeepPCB), then a report (HTML) compares the global model with each plant alone and with
    centralized training. Ctrl-C stops everything."""
    from fedinspect.demo import DemoError, DemoSettings, run_demo

    if source == "deeppcb" and path is None:
        raise click.UsageError("--data deeppcb needs the DeepPCB folder: fedinspect demo --data deeppcb PATH")
    settings = DemoSettings(
        out_dir=out_dir,
        rounds=rounds,
        plants=plants,
        train_boards=boards,
        test_boards=max(4, boards // 3),
        detector_epochs=detector_epochs,
        seed=seed,
        deeppcb=path if source == "deeppcb" else None,
        reference=templates,
        kinds_per_plant=kinds_per_plant,
        keep_running=keep_running,
        classifier_arch="template-crops" if templates else "mobilenet_v2",
        detector_arch="template-crops" if templates else "yolov8n",
    )
    try:
        run_demo(settings, echo=lambda line: click.echo(line))
    except DemoError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted: every demo process stopped", err=True)
        sys.exit(130)


@cli.group()
def data() -> None:
    """Training data per plant: generated PCB boards, or DeepPCB split into plants by board group."""


def _write_data(plant_data: PlantData, out_dir: Path, source: dict[str, object]) -> None:
    from fedinspect.demo_data import write_plant_data

    try:
        summary = write_plant_data(plant_data, out_dir, source=source)
    except (ValueError, OSError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    plants = summary["plants"]
    assert isinstance(plants, dict)
    for name, splits in plants.items():
        counts = ", ".join(
            f"{split} {c['good']} good + {c['defective']} defective ({c['boxes']} boxes)" for split, c in splits.items()
        )
        click.echo(f"  {name}: {counts}")
    click.echo(f"written to {out_dir}: PLANT/detect (YOLO, data.yaml) and PLANT/classify (good|defective folders)")


@data.command("generate")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--plants", type=click.IntRange(1, 26), default=3, show_default=True, help="Plants (board styles).")
@click.option("--boards", type=click.IntRange(1, 99999), default=40, show_default=True, help="Training boards a plant")
@click.option("--test-boards", type=click.IntRange(1, 99999), default=15, show_default=True, help="Test boards a plant")
@click.option("--size", type=click.IntRange(64, 4096), default=256, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_generate(out_dir: Path, plants: int, boards: int, test_boards: int, size: int, seed: int) -> None:
    """Generated PCB boards (a template and a defective copy each, DeepPCB's six defect classes) for PLANTS plants
    that differ in board style, defect mix, lighting and noise, plus an unseen style; deterministic by seed."""
    from fedinspect.demo_data import synthetic_plants

    generated = synthetic_plants(plants, train_boards=boards, test_boards=test_boards, size=size, seed=seed)
    _write_data(
        generated,
        out_dir,
        {"kind": "synthetic", "boards": boards, "test_boards": test_boards, "size": size, "seed": seed},
    )


@data.command("deeppcb")
@click.argument("path", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--plants", type=click.IntRange(1, 26), default=3, show_default=True, help="Plants (groups of boards).")
@click.option(
    "--held-out-groups", type=click.IntRange(0, 26), default=1, show_default=True, help="Board groups no plant gets."
)
@click.option("--size", type=click.IntRange(64, 4096), default=None, help="Resize the 640 px images (boxes too).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the per-plant test split.")
@click.option(
    "--reference/--no-reference",
    default=False,
    show_default=True,
    help="Write each image compared with its template (3 channels: image, template, difference).",
)
def data_deeppcb(
    path: Path, out_dir: Path, plants: int, held_out_groups: int, size: int | None, seed: int, reference: bool
) -> None:
    """Import DeepPCB (PATH holds trainval.txt) as per-plant YOLO and good/defective data: board groups are dealt
    to PLANTS plants, the last HELD_OUT_GROUPS groups become the unseen set, a fifth of each plant's pairs its test
    split (template and defective image of one spot stay together)."""
    from fedinspect.demo_data import deeppcb_plants

    try:
        imported = deeppcb_plants(
            path, plants=plants, held_out_groups=held_out_groups, size=size, seed=seed, reference=reference
        )
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    _write_data(
        imported,
        out_dir,
        {
            "kind": "deeppcb",
            "path": str(path.resolve()),
            "size": size,
            "seed": seed,
            "held_out_groups": held_out_groups,
            "reference": reference,
        },
    )


@cli.group()
def bench() -> None:
    """Benchmarks that print ours-vs-reference ratios measured in one run."""


@bench.command("fl")
@click.option("--data", "source", type=click.Choice(["synthetic", "deeppcb"]), default="synthetic", show_default=True)
@click.argument("path", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--task", type=click.Choice(["detect", "classify", "both"]), default="both", show_default=True)
@click.option("--rounds", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--local-epochs", type=click.IntRange(1, 100), default=2, show_default=True)
@click.option("--imgsz", type=click.IntRange(64, 1280), default=320, show_default=True, help="Detector input size.")
@click.option("--boards", type=click.IntRange(4, 5000), default=40, show_default=True, help="Generated boards a plant.")
@click.option(
    "--max-images", type=click.IntRange(1), default=None, help="Cap on training images per plant (CPU budget)."
)
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True)
@click.option(
    "--pretrain-epochs",
    type=click.IntRange(0, 300),
    default=0,
    show_default=True,
    help="Detector v0: YOLOv8n trained this many epochs on generated boards first (0: from scratch).",
)
@click.option(
    "--reference/--no-reference",
    default=False,
    show_default=True,
    help="Both models see each image with its board's template (3 channels: image, template, difference).",
)
@click.option(
    "--lr",
    "learning_rate",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.001,
    show_default=True,
    help="Every arm's learning rate.",
)
@click.option(
    "--federated-lr-scale",
    type=click.FloatRange(0, 100, min_open=True),
    default=1.0,
    show_default=True,
    help="The federated plants train at --lr x this (e.g. the number of plants: the linear-scaling rule).",
)
@click.option(
    "--strategy",
    type=click.Choice(["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad"]),
    default="fedavg",
    show_default=True,
    help="The hub's aggregation strategy for the federated arm.",
)
@click.option(
    "--strategy-param",
    "strategy_params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A strategy parameter, e.g. server_momentum=0.9 (repeatable); as aggregation.params in hub.yaml.",
)
@click.option(
    "--lr-decay",
    "learning_rate_decay",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="Round n trains at --lr x this^(n-1), at least 5 % of it (a round plan's learning_rate_decay); with "
    "--until converged every arm's step n does.",
)
@click.option(
    "--augment",
    "detector_augmentation",
    multiple=True,
    metavar="KEY=VALUE",
    help="A detector training-image change, e.g. rotate90=false or brightness=0 (repeatable); as "
    "training.augmentation in edge.yaml, for every arm.",
)
@click.option(
    "--arms",
    type=click.Choice(["all", "federated"]),
    default="all",
    show_default=True,
    help="federated: train and score only the federated arm (compare strategies against baselines measured once).",
)
@click.option(
    "--score-on",
    type=click.Choice(["held-out", "validation"]),
    default="held-out",
    show_default=True,
    help="validation: score on a fifth of each plant's training boards (to choose settings), not the held-out set.",
)
@click.option(
    "--classifier-arch",
    type=click.Choice(["resnet18", "mobilenet_v2", "mobilenet_v3_small", "template-crops"]),
    default="mobilenet_v2",
    show_default=True,
    help="Classifier architecture: torchvision, or template-crops (a board as defective as the most defect-like "
    "place where it differs from its template; needs --reference; --classifier-size and --pretrained do not apply).",
)
@click.option(
    "--classifier-size", type=click.IntRange(32, 1024), default=128, show_default=True, help="Classifier input size."
)
@click.option(
    "--pretrained/--no-pretrained",
    default=True,
    show_default=True,
    help="Classifier v0 on the packaged ImageNet backbone (mobilenet_v2; deploy/requirements-pretrained.txt).",
)
@click.option(
    "--until",
    type=click.Choice(["epochs", "converged"]),
    default="epochs",
    show_default=True,
    help="epochs: every arm trains --rounds x --local-epochs epochs. converged: steps of --local-epochs (a round "
    "when federated) until --patience steps bring no gain on validation boards (a fifth of each plant's), at most "
    "--rounds steps or --budget-minutes for all arms; each arm's best step is scored on the held-out set.",
)
@click.option("--patience", type=click.IntRange(1, 100), default=3, show_default=True, help="With --until converged.")
@click.option(
    "--budget-minutes",
    type=click.FloatRange(1, 10000),
    default=90.0,
    show_default=True,
    help="With --until converged: wall-clock budget of all arms together; each arm, the federated one last, gets an "
    "equal share of what is left when it starts.",
)
@click.option(
    "--detector-arch",
    type=click.Choice(["template-crops", "yolov8n"]),
    default="template-crops",
    show_default=True,
    help="template-crops: names each place where a board differs from its template (needs --reference; images at "
    "their native size, e.g. --imgsz 640 on DeepPCB); yolov8n: Ultralytics YOLOv8n at --imgsz.",
)
@click.option(
    "--kinds-per-plant",
    type=click.IntRange(1, 6),
    default=None,
    help="Each plant's training boards hold only this many of the 6 defect kinds (4: plant a open..spur, b "
    "mousebite..pin-hole, c copper..short; DeepPCB: the other defects painted over with the template); test and "
    "unseen boards hold every kind. Default: every plant has every kind.",
)
@click.option(
    "--crop-detector-batch",
    type=click.IntRange(2, 4096),
    default=64,
    show_default=True,
    help="Crops a step of the template-crops detector (the demo trains generated boards at 32).",
)
@click.option(
    "--labeled-kinds-only/--every-kind",
    default=True,
    show_default=True,
    help="Template-crops detector: a run leaves the defect kinds its training data has no box of out of the loss's "
    "softmax (restricted softmax); --every-kind trains them as background.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Train and score on cpu, or cuda / cuda:N.")
@click.option(
    "--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-fl"), show_default=True
)
def bench_fl(
    source: str,
    path: Path | None,
    task: str,
    rounds: int,
    local_epochs: int,
    imgsz: int,
    boards: int,
    max_images: int | None,
    threads: int,
    pretrain_epochs: int,
    reference: bool,
    learning_rate: float,
    federated_lr_scale: float,
    strategy: str,
    strategy_params: tuple[str, ...],
    detector_augmentation: tuple[str, ...],
    learning_rate_decay: float,
    arms: str,
    score_on: str,
    classifier_arch: str,
    classifier_size: int,
    pretrained: bool,
    until: str,
    patience: int,
    budget_minutes: float,
    detector_arch: str,
    kinds_per_plant: int | None,
    crop_detector_batch: int,
    labeled_kinds_only: bool,
    seed: int,
    device: str,
    work_dir: Path,
) -> None:
    """Federated vs centralized vs each plant alone on the same data and budget: mAP50, mAP50-95, per-class AP,
    classifier accuracy, and the ratios. `--data deeppcb PATH` partitions DeepPCB by board group."""
    from pydantic import ValidationError

    from fedinspect.bench_fl import FlBenchSettings, run_fl_bench
    from schemas.config import AugmentationConfig

    if source == "deeppcb" and path is None:
        raise click.UsageError("--data deeppcb needs the DeepPCB folder: fedinspect bench fl --data deeppcb PATH")
    if until == "converged" and score_on == "validation":
        raise click.UsageError("--until converged judges convergence on validation boards itself: drop --score-on")
    if classifier_arch == "template-crops" and task != "detect" and not reference:
        raise click.UsageError(
            "--classifier-arch template-crops compares each board with its template: add --reference"
        )
    if detector_arch == "template-crops" and task != "classify" and not reference:
        raise click.UsageError(
            "--detector-arch template-crops compares each board with its template: add --reference, or choose "
            "--detector-arch yolov8n"
        )
    params = []
    for item in strategy_params:
        key, _, value = item.partition("=")
        try:
            params.append((key.strip(), float(value)))
        except ValueError:
            raise click.BadParameter(f"{item!r}: expected KEY=NUMBER", param_hint="--strategy-param") from None
    augmentation = tuple(
        (key.strip(), value.strip()) for key, _, value in (i.partition("=") for i in detector_augmentation)
    )
    try:
        AugmentationConfig.model_validate(dict(augmentation))
    except ValidationError as error:
        raise click.BadParameter(f"{', '.join(detector_augmentation)}: {error}", param_hint="--augment") from None
    run_fl_bench(
        FlBenchSettings(
            work_dir=work_dir,
            task=task,
            rounds=rounds,
            local_epochs=local_epochs,
            imgsz=imgsz,
            boards=boards,
            max_images=max_images,
            threads=threads,
            pretrain_epochs=pretrain_epochs,
            seed=seed,
            device=device,
            deeppcb=path if source == "deeppcb" else None,
            reference=reference,
            learning_rate=learning_rate,
            federated_lr_scale=federated_lr_scale,
            strategy=strategy,
            strategy_params=tuple(params),
            detector_augmentation=augmentation,
            learning_rate_decay=learning_rate_decay,
            arms=arms,
            score_on=score_on,
            classifier_arch=classifier_arch,
            classifier_size=classifier_size,
            pretrained=pretrained,
            detector_arch=detector_arch,
            kinds_per_plant=kinds_per_plant,
            crop_detector_batch=crop_detector_batch,
            labeled_kinds_only=labeled_kinds_only,
            until=until,
            patience=patience,
            budget_minutes=budget_minutes,
        ),
        echo=click.echo,
    )


@bench.command("transfer")
@click.option("--size-mb", type=float, default=12.0, show_default=True, help="Size of the fp32 state dict.")
@click.option("--chunk-kb", type=click.IntRange(64, 1024), default=256, show_default=True, help="Chunk size.")
@click.option("--repeat", type=click.IntRange(1, 50), default=5, show_default=True, help="Runs per measurement.")
def bench_transfer(size_mb: float, chunk_kb: int, repeat: int) -> None:
    """Bytes on the wire per encoding; chunked transfer time vs mosquitto_pub -f (needs mosquitto)."""
    from fedinspect.bench_transfer import run_transfer_bench

    try:
        run_transfer_bench(size_mb=size_mb, chunk_kb=chunk_kb, repeat=repeat, echo=click.echo)
    except FileNotFoundError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@bench.command("aggregate")
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True, help="Timed runs per size.")
def bench_aggregate(repeat: int) -> None:
    """FedAvg of 10 and 100 YOLOv8n-size updates: time and peak memory vs Flower's aggregate (needs .[bench])."""
    from fedinspect.bench_aggregate import run_aggregate_bench

    try:
        run_aggregate_bench(repeat=repeat, echo=click.echo)
    except ImportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@bench.command("inference")
@click.option("--size", "sizes", type=int, multiple=True, default=(320, 640), show_default=True, help="Input px.")
@click.option("--batch", "batches", type=int, multiple=True, default=(1, 8), show_default=True, help="Batch sizes.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="CPU threads (default: all cores).")
@click.option("--seconds", type=float, default=3.0, show_default=True, help="Wall time per measurement.")
@click.option("--images", type=click.Path(file_okay=False, exists=True, path_type=Path), help="Image folder.")
def bench_inference(
    sizes: tuple[int, ...], batches: tuple[int, ...], threads: int | None, seconds: float, images: Path | None
) -> None:
    """Images/s of our ONNX Runtime classifier and detector vs torch eager and Ultralytics predict (needs .[train])."""
    from fedinspect.bench_inference import run_inference_bench

    try:
        run_inference_bench(
            sizes=sizes, batches=batches, threads=threads, seconds=seconds, images_dir=images, echo=click.echo
        )
    except (ImportError, FileNotFoundError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@bench.command("edge")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="Wall time per side.")
def bench_edge(seconds: float) -> None:
    """Images/s through the edge's HTTP source vs the bare pipeline on the same images (needs .[train])."""
    from fedinspect.bench_edge import run_edge_bench

    try:
        run_edge_bench(seconds=seconds, echo=click.echo)
    except ImportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@bench.command("pretrained")
@click.option("--labels", type=int, multiple=True, default=(20, 50), show_default=True, help="Labeled images.")
@click.option("--epochs", type=click.IntRange(1, 1000), default=5, show_default=True, help="Epochs of every arm.")
@click.option("--size", type=click.IntRange(32, 1024), default=128, show_default=True, help="Board side in px.")
@click.option("--threads", type=click.IntRange(1, 256), default=2, show_default=True, help="CPU threads.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Learning rate of every arm (Adam).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of data, models and training.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-pretrained"),
    show_default=True,
    help="Scratch folder (replaced); results.json ends up here.",
)
def bench_pretrained(
    labels: tuple[int, ...], epochs: int, size: int, threads: int, lr: float, seed: int, work_dir: Path
) -> None:
    """MobileNetV2 from packaged ImageNet weights vs random weights on few labels, full vs head-only fine-tuning,
    and the bytes of each update (needs .[train] and deploy/requirements-pretrained.txt)."""
    from exporters.errors import ExportError
    from fedinspect.bench_pretrained import PretrainedBenchSettings, run_pretrained_bench

    settings = PretrainedBenchSettings(
        work_dir=work_dir, labels=labels, epochs=epochs, size=size, threads=threads, learning_rate=lr, seed=seed
    )
    try:
        run_pretrained_bench(settings, echo=click.echo)
    except (ImportError, ExportError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _register_subcommands() -> None:
    from fedinspect.export_cli import export

    cli.add_command(export)


_register_subcommands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
