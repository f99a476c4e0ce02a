# shellcheck shell=bash
# Prepare a local virtual environment for mosaicvi. Sourced by scripts/demo.sh and scripts/test.sh;
# it can also be sourced by hand (`source scripts/setup.sh`) to get an activated environment.
#
# What it does, each step only when needed (so a second run takes about a second):
#   1. find a Python >= 3.11 (MOSAICVI_PYTHON chooses the interpreter; default python3);
#   2. create .venv in the repository root with `python -m venv` if it is absent;
#   3. install torch if the venv cannot import it (MOSAICVI_TORCH, default torch==2.13.0, a CPU-friendly
#      pin for fresh machines; an existing torch >= 2.4 is kept as is);
#   4. `pip install -e ".[test]"` unless .venv/.mosaicvi-stamp is newer than pyproject.toml;
#   5. activate the venv and export MOSAICVI_ROOT.

_mosaicvi_setup() {
    local root py venv stamp torch_spec
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$root/.venv"
    stamp="$venv/.mosaicvi-stamp"
    torch_spec="${MOSAICVI_TORCH:-torch==2.13.0}"

    _mosaicvi_check_python() {
        # $1: interpreter; fails with a message unless it is Python >= 3.11
        local found
        if ! command -v "$1" >/dev/null 2>&1; then
            echo "error: Python interpreter '$1' not found (set MOSAICVI_PYTHON to a Python >= 3.11)" >&2
            return 1
        fi
        if ! found="$("$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"; then
            echo "error: could not run Python interpreter '$1' (set MOSAICVI_PYTHON to a Python >= 3.11)" >&2
            return 1
        fi
        if ! "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
            echo "error: mosaicvi needs Python >= 3.11, but '$1' is Python $found." >&2
            echo "       Install a newer Python and point MOSAICVI_PYTHON at it, e.g. MOSAICVI_PYTHON=python3.12" >&2
            return 1
        fi
    }

    if [ ! -x "$venv/bin/python" ]; then
        py="${MOSAICVI_PYTHON:-python3}"
        _mosaicvi_check_python "$py" || return 1
        echo "[setup] creating virtual environment $venv with $py"
        "$py" -m venv "$venv" || { echo "error: could not create $venv (is the venv module installed?)" >&2; return 1; }
        "$venv/bin/python" -m pip install --quiet --upgrade pip || return 1
    else
        _mosaicvi_check_python "$venv/bin/python" || {
            echo "       (remove $venv to recreate it with another interpreter)" >&2
            return 1
        }
    fi

    # find_spec locates a package without importing it (importing torch takes seconds)
    if ! "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("torch") is None)' \
        >/dev/null 2>&1; then
        echo "[setup] installing $torch_spec (set MOSAICVI_TORCH to choose another build)"
        "$venv/bin/python" -m pip install --quiet "$torch_spec" || return 1
    fi

    if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] \
        || ! "$venv/bin/python" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("mosaicvi") is None)' \
            >/dev/null 2>&1; then
        echo "[setup] installing mosaicvi and its dependencies into $venv (pip install -e .[test])"
        (cd "$root" && "$venv/bin/python" -m pip install --quiet -e ".[test]") || return 1
        touch "$stamp"
    fi

    # shellcheck disable=SC1091
    VIRTUAL_ENV_DISABLE_PROMPT=1 source "$venv/bin/activate"
    export MOSAICVI_ROOT="$root"
}

_mosaicvi_setup || {
    echo "error: mosaicvi setup failed (see the messages above)" >&2
    return 1 2>/dev/null || exit 1
}
