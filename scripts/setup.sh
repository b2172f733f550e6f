# Shared by scripts/try and scripts/test: install what a fresh Debian machine lacks.
# Sourced, not run. Installs system packages with apt-get (as root, or through sudo),
# then a virtual environment in .venv with ciq (and its test extras when asked).

ciq_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ciq_apt_install() {
    local missing=("$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "ciq: installing ${missing[*]} with apt-get" >&2
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then sudo="sudo"; else
            echo "ciq: need root to install ${missing[*]}: apt-get install -y ${missing[*]}" >&2
            return 1
        fi
    fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

ciq_system_packages() {
    local missing=()
    command -v git >/dev/null || missing+=(git)
    command -v redis-server >/dev/null || missing+=(redis-server)
    command -v openssl >/dev/null || missing+=(openssl)
    # Every untrusted process of a run starts in a bubblewrap box (ciq/runner/box.py).
    command -v bwrap >/dev/null || missing+=(bubblewrap)
    python3 -c "import venv, ensurepip" 2>/dev/null || missing+=(python3-venv)
    ciq_apt_install "${missing[@]}"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "ciq: needs Python 3.11 or newer; python3 is $(python3 --version 2>&1)" >&2
        return 1
    }
}

# ciq_venv [EXTRAS]: .venv with ciq installed editable; reinstalls only when
# pyproject.toml changed since the last install.
ciq_venv() {
    local extras="${1:-}" venv="$ciq_root/.venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    local stamp="$venv/.ciq-installed" want
    want="$(sha256sum "$ciq_root/pyproject.toml" | cut -c1-16)-$extras"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "ciq: installing ciq${extras:+[$extras]} into .venv" >&2
        # The build backend's warnings are noise to a newcomer: keep them in a log,
        # shown only when the install fails.
        local log="$venv/install.log"
        if ! { "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip &&
               "$venv/bin/python" -m pip install -q --disable-pip-version-check \
                   -e "$ciq_root${extras:+[$extras]}"; } >"$log" 2>&1; then
            cat "$log" >&2
            echo "ciq: installing into .venv failed (log above, also in $log)" >&2
            return 1
        fi
        echo "$want" > "$stamp"
    fi
}
