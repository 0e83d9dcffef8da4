#!/usr/bin/env bash
# Install fedinspect as a service on this machine, from a checkout. Idempotent: run it again to update.
#
#   sudo deploy/install.sh --role edge   --config PLANT/edges/EDGE_ID   # an edge box
#   sudo deploy/install.sh --role hub    --config PLANT/hub             # the hub
#   sudo deploy/install.sh --role broker --config PLANT/mosquitto       # the broker (Mosquitto itself: apt)
#   sudo deploy/install.sh --uninstall [--purge]                        # keeps config and data unless --purge
#
# Options: --prefix ROOT installs under ROOT (for images and tests; implies --no-systemctl),
#          --no-systemctl skips enabling/starting, --skip-venv skips the Python environment,
#          --print-extra prints the onnxruntime build this machine gets (gpu with a working NVIDIA driver).
set -euo pipefail

ROLE="" CONFIG_SRC="" PREFIX="" SYSTEMCTL=1 SKIP_VENV=0 UNINSTALL=0 PURGE=0 PRINT_EXTRA=0
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while (($#)); do
    case "$1" in
        --role) ROLE="${2:?--role needs edge, hub or broker}"; shift 2 ;;
        --config) CONFIG_SRC="${2:?--config needs a directory}"; shift 2 ;;
        --prefix) PREFIX="${2:?--prefix needs a directory}"; SYSTEMCTL=0; shift 2 ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        --skip-venv) SKIP_VENV=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        --print-extra) PRINT_EXTRA=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
ETC="$PREFIX/etc/fedinspect"
DATA="$PREFIX/var/lib/fedinspect"
OPT="$PREFIX/opt/fedinspect"
UNIT_DIR="$PREFIX/etc/systemd/system"
USER_NAME=fedinspect

onnxruntime_extra() {
    # onnxruntime-gpu only where a driver answers; it would fall back to CPU anyway, at 1.5 GB more.
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo gpu; else echo cpu; fi
}
if ((PRINT_EXTRA)); then onnxruntime_extra; exit 0; fi

[[ $(id -u) -eq 0 ]] || { echo "install.sh: run as root (it creates a user and system files)" >&2; exit 1; }
root_args=()
[[ -n "$PREFIX" ]] && root_args=(--root "$PREFIX")
say() { echo "install.sh: $*"; }

units_for_role() {
    case "$1" in
        edge) echo fedinspect-edge.service ;;
        hub) echo fedinspect-hub.service ;;
        broker) echo fedinspect-mosquitto.service ;;
        all) echo fedinspect-edge.service fedinspect-hub.service fedinspect-mosquitto.service ;;
        *) echo "install.sh: --role must be edge, hub or broker, not '$1'" >&2; exit 2 ;;
    esac
}

if ((UNINSTALL)); then
    for unit in $(units_for_role all); do
        if [[ -f "$UNIT_DIR/$unit" ]]; then
            ((SYSTEMCTL)) && systemctl disable --now "$unit" || true
            rm -f "$UNIT_DIR/$unit"
            say "removed $unit"
        fi
    done
    ((SYSTEMCTL)) && systemctl daemon-reload || true
    rm -rf "$OPT"
    if ((PURGE)); then
        rm -rf "$ETC" "$DATA"
        userdel "${root_args[@]}" "$USER_NAME" 2>/dev/null || true
        say "purged configuration, keys and data"
    else
        say "kept $ETC (configuration, keys) and $DATA (buffers, registry); --purge removes them"
    fi
    exit 0
fi

[[ -n "$ROLE" ]] || { echo "install.sh: --role is required" >&2; usage 2; }
UNIT="$(units_for_role "$ROLE")"
if [[ -n "$CONFIG_SRC" && ! -d "$CONFIG_SRC" ]]; then
    echo "install.sh: --config $CONFIG_SRC is not a directory (use the folder from fedinspect ca init / enroll)" >&2
    exit 2
fi

# 1. A system user that owns the data and nothing else.
if ! grep -q "^$USER_NAME:" "$PREFIX/etc/passwd" 2>/dev/null; then
    grep -q "^$USER_NAME:" "$PREFIX/etc/group" 2>/dev/null || groupadd "${root_args[@]}" --system "$USER_NAME"
    useradd "${root_args[@]}" --system --gid "$USER_NAME" --home-dir /var/lib/fedinspect --no-create-home \
        --shell /usr/sbin/nologin "$USER_NAME" 2>/dev/null
    say "created user $USER_NAME"
fi
USER_UID="$(awk -F: -v u="$USER_NAME" '$1 == u {print $3}' "$PREFIX/etc/passwd")"
USER_GID="$(awk -F: -v u="$USER_NAME" '$1 == u {print $4}' "$PREFIX/etc/passwd")"
MOSQUITTO_GID="$(awk -F: '$1 == "mosquitto" {print $3}' "$PREFIX/etc/group" 2>/dev/null)"
MOSQUITTO_GID="${MOSQUITTO_GID:-0}"
MOSQUITTO_UID="$(awk -F: '$1 == "mosquitto" {print $3}' "$PREFIX/etc/passwd" 2>/dev/null)"
MOSQUITTO_UID="${MOSQUITTO_UID:-0}"

# 2. Directories: data writable by the service only; configuration readable by its group only.
install -d -m 0755 "$OPT"
install -d -m 0750 -o "$USER_UID" -g "$USER_GID" "$DATA" "$DATA/cache" "$DATA/ultralytics"
# 0751: mosquitto, after dropping to its own user, must traverse into $ETC/mosquitto on reload; nothing here can
# be listed by others, and every file keeps its own restrictive mode.
install -d -m 0751 -o 0 -g "$USER_GID" "$ETC"
install -d -m 0750 -o 0 -g "$USER_GID" "$ETC/keys"

# 3. Configuration and secrets from the plant folder. Secrets are 0600, owned by the process that reads them.
secret() { install -m 0600 -o "$1" -g "$2" "$3" "$4"; }
public() { install -m 0644 -o 0 -g 0 "$1" "$2"; }
if [[ -n "$CONFIG_SRC" ]]; then
    case "$ROLE" in
        edge)
            install -m 0640 -o 0 -g "$USER_GID" "$CONFIG_SRC/edge.yaml" "$ETC/edge.yaml"
            secret "$USER_UID" "$USER_GID" "$CONFIG_SRC/edge.env" "$ETC/edge.env"
            public "$CONFIG_SRC/ca.crt" "$ETC/ca.crt"
            for key in "$CONFIG_SRC"/keys/*.key "$CONFIG_SRC"/*.key; do
                [[ -e "$key" ]] || continue
                if [[ "$key" == */keys/* ]]; then
                    secret "$USER_UID" "$USER_GID" "$key" "$ETC/keys/$(basename "$key")"
                else
                    secret "$USER_UID" "$USER_GID" "$key" "$ETC/$(basename "$key")"
                fi
            done
            for file in "$CONFIG_SRC"/keys/*.pub; do public "$file" "$ETC/keys/$(basename "$file")"; done
            for file in "$CONFIG_SRC"/*.crt; do public "$file" "$ETC/$(basename "$file")"; done
            ;;
        hub)
            install -m 0640 -o 0 -g "$USER_GID" "$CONFIG_SRC/hub.yaml" "$ETC/hub.yaml"
            secret "$USER_UID" "$USER_GID" "$CONFIG_SRC/hub.env" "$ETC/hub.env"
            install -d -m 0750 -o 0 -g "$USER_GID" "$ETC/keys/edges"
            for key in "$CONFIG_SRC"/keys/*.key; do secret "$USER_UID" "$USER_GID" "$key" "$ETC/keys/$(basename "$key")"; done
            for file in "$CONFIG_SRC"/keys/*.pub; do public "$file" "$ETC/keys/$(basename "$file")"; done
            for file in "$CONFIG_SRC"/keys/edges/*.pub; do
                [[ -e "$file" ]] && public "$file" "$ETC/keys/edges/$(basename "$file")"
            done
            # the HTTPS certificate of the hub's pages (fedinspect ca init --hub-web-host), when there is one
            for key in "$CONFIG_SRC"/*.key; do
                [[ -e "$key" ]] && secret "$USER_UID" "$USER_GID" "$key" "$ETC/$(basename "$key")"
            done
            for file in "$CONFIG_SRC"/*.crt; do
                [[ -e "$file" ]] && public "$file" "$ETC/$(basename "$file")"
            done
            ;;
        broker)
            install -d -m 0750 -o 0 -g "$MOSQUITTO_GID" "$ETC/mosquitto"
            # Persistence where Debian's mosquitto package keeps it, writable by the user mosquitto runs as.
            install -d -m 0750 -o "$MOSQUITTO_UID" -g "$MOSQUITTO_GID" "$PREFIX/var/lib/mosquitto"
            for file in mosquitto.conf acl ca.crt broker.crt crl.pem; do
                install -m 0644 -o 0 -g 0 "$CONFIG_SRC/$file" "$ETC/mosquitto/$file"
            done
            # Read again on reload, after mosquitto dropped to its own user: readable by its group only.
            for file in passwd broker.key; do install -m 0640 -o 0 -g "$MOSQUITTO_GID" "$CONFIG_SRC/$file" "$ETC/mosquitto/$file"; done
            ;;
    esac
    say "configuration installed in $ETC"
fi

# 4. The Python environment, with the onnxruntime build this machine can use.
if ((!SKIP_VENV)) && [[ "$ROLE" != broker ]]; then
    extra="$(onnxruntime_extra)"
    [[ -x "$OPT/venv/bin/python" ]] || python3 -m venv "$OPT/venv"
    "$OPT/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$OPT/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${REPO}[${extra}]"
    say "python environment in $OPT/venv (onnxruntime: $extra)"
fi

# 5. The service unit.
install -d -m 0755 "$UNIT_DIR"
install -m 0644 -o 0 -g 0 "$REPO/deploy/systemd/$UNIT" "$UNIT_DIR/$UNIT"
if ((SYSTEMCTL)); then
    systemctl daemon-reload
    systemctl enable --now "$UNIT"
    say "$UNIT enabled and started"
else
    say "$UNIT installed (not started: --no-systemctl)"
fi
