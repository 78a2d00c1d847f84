#!/usr/bin/env bash
# Install patrol-agent on the unit: `sudo make install` (or tools/install.sh).
#   DESTDIR=/tmp/root tools/install.sh      install into a temporary root (CI)
#   tools/install.sh --uninstall [--purge]  remove it (--purge: config, state, user and groups too)
# Idempotent: running it again changes nothing (files are only rewritten when
# their content differs; the existing config is never overwritten).
# `patrol-agent` goes on PATH as /usr/local/bin/patrol-agent, a relative link
# to the venv's script (so it also resolves inside a DESTDIR root).
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${DESTDIR:-}
PREFIX=$ROOT/opt/patrol-agent
ETC=$ROOT/etc/patrol-agent
UNITS=$ROOT/etc/systemd/system
STATE=$ROOT/var/lib/patrol-agent
BINDIR=$ROOT/usr/local/bin
LINK_TARGET=../../../opt/patrol-agent/venv/bin/patrol-agent
NAME=patrol-agent
CREATED_GROUPS=$ETC/.created-groups   # the groups this script made (purge removes only those)
PY=${PY:-python3}

say() { echo "install: $*"; }
[ "$(id -u)" -eq 0 ] || { echo "install: run as root (sudo make install)" >&2; exit 1; }

prefix_args=()
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT/etc"
    for f in passwd group shadow gshadow; do [ -e "$ROOT/etc/$f" ] || : > "$ROOT/etc/$f"; done
    prefix_args=(--prefix "$ROOT")
fi
has_group() { grep -q "^$1:" "${ROOT:-}/etc/group"; }
has_user() { grep -q "^$1:" "${ROOT:-}/etc/passwd"; }
id_of() { awk -F: -v n="$1" '$1 == n { print $3 }' "${ROOT:-}/etc/$2"; }

uninstall() {
    if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now "$NAME" 2>/dev/null || true
    fi
    rm -f "$UNITS/multi-user.target.wants/$NAME.service" "$UNITS/$NAME.service"
    if [ "$(readlink "$BINDIR/$NAME" 2>/dev/null)" = "$LINK_TARGET" ]; then rm -f "$BINDIR/$NAME"; fi
    rm -rf "$PREFIX"
    if [ "${1:-}" = "--purge" ]; then
        created=$(cat "$CREATED_GROUPS" 2>/dev/null || true)
        rm -rf "$ETC" "$STATE"
        if has_user "$NAME"; then userdel "${prefix_args[@]}" "$NAME"; fi
        for group in "$NAME" $created; do
            if has_group "$group"; then groupdel "${prefix_args[@]}" "$group"; say "group $group removed"; fi
        done
    fi
    say "removed${1:+ (purged)}"
}
if [ "${1:-}" = "--uninstall" ]; then uninstall "${2:-}"; exit 0; fi

# 1. the service account, in the dialout (serial) and gpio groups; technicians join its group
#    (patrol-agent) to use status, monitor and panic test without root
created=()
for group in dialout gpio; do
    has_group "$group" || { groupadd "${prefix_args[@]}" --system "$group"; say "group $group created"; created+=("$group"); }
done
if ! has_user "$NAME"; then
    useradd "${prefix_args[@]}" --system --user-group --home-dir /var/lib/$NAME --no-create-home \
        --shell /usr/sbin/nologin --groups dialout,gpio "$NAME"
    say "user $NAME created"
fi
uid=$(id_of "$NAME" passwd); gid=$(id_of "$NAME" group)

# 2. the program, in its own venv (rebuilt only when the source changed)
stamp=$(cd "$SRC" && cat pyproject.toml $(find agent drivers -name '*.py' | sort) | sha256sum | cut -c1-16)
if [ ! -x "$PREFIX/venv/bin/$NAME" ] || [ "$(cat "$PREFIX/.source" 2>/dev/null)" != "$stamp" ]; then
    mkdir -p "$PREFIX"
    [ -x "$PREFIX/venv/bin/python" ] || "$PY" -m venv "$PREFIX/venv"
    "$PREFIX/venv/bin/python" -m pip install -q --disable-pip-version-check "$SRC"
    echo "$stamp" > "$PREFIX/.source"
    say "program installed in $PREFIX/venv"
fi
install_file() {  # mode owner source destination: only when different
    if ! cmp -s "$3" "$4"; then install -m "$1" -o "${2%:*}" -g "${2#*:}" "$3" "$4"; say "wrote $4"; fi
    chmod "$1" "$4"; chown "$2" "$4"
}
install_file 0644 0:0 "$SRC/README.md" "$PREFIX/README.md"

# 3. config: root-owned, readable by the service's group only; never overwritten
install -d -m 0750 -o 0 -g "$gid" "$ETC"
if [ "${#created[@]}" -gt 0 ]; then
    printf '%s\n' "${created[@]}" >> "$CREATED_GROUPS"; chmod 0640 "$CREATED_GROUPS"
fi
if [ ! -e "$ETC/agent.yaml" ]; then
    install -m 0640 -o 0 -g "$gid" "$SRC/config/agent.example.yaml" "$ETC/agent.yaml"
    say "wrote $ETC/agent.yaml (the example: run patrol-agent provision to fill it in)"
fi
chmod 0640 "$ETC/agent.yaml"; chown "0:$gid" "$ETC/agent.yaml"

# 4. state: the service's own (systemd's StateDirectory= keeps it so as well)
install -d -m 0700 -o "$uid" -g "$gid" "$STATE"

# 5. the command on PATH (sudo's secure_path includes /usr/local/bin)
install -d -m 0755 "$BINDIR"
[ "$(readlink "$BINDIR/$NAME" 2>/dev/null)" = "$LINK_TARGET" ] || {
    ln -sfn "$LINK_TARGET" "$BINDIR/$NAME"; say "linked $BINDIR/$NAME"; }

# 6. the unit, enabled
install -d -m 0755 "$UNITS" "$UNITS/multi-user.target.wants"
install_file 0644 0:0 "$SRC/systemd/$NAME.service" "$UNITS/$NAME.service"
link="$UNITS/multi-user.target.wants/$NAME.service"
[ "$(readlink "$link" 2>/dev/null)" = "/etc/systemd/system/$NAME.service" ] || {
    ln -sfn "/etc/systemd/system/$NAME.service" "$link"; say "enabled $NAME.service"; }
if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
say "done. Next: patrol-agent provision ... (writes $ETC/agent.yaml), then systemctl start $NAME"
say "technicians: sudo usermod -aG $NAME \$USER (then log in again) to run status, monitor and panic test"
