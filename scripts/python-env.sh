#!/usr/bin/env bash
# Creates (once) the Python virtualenv the cross-check tests run their Kafka reference
# implementation in, and prints its interpreter's path as the last line on stdout.
#
#   scripts/python-env.sh            # -> /path/to/target/py-venv/bin/python
#
# The venv lives in $CARGO_TARGET_DIR/py-venv (target/py-venv by default) and holds exactly
# the pinned versions of tests/python/requirements.txt. A stamp file keeps the SHA-256 of
# that file (and of the interpreter's version): while it matches, the script only prints the
# path; when it differs (requirements changed, a new Python), the venv is made anew.
# Several test processes may call it at once: an flock serializes them, and the losers find
# the stamp written by the winner. PYTHON names the interpreter to build from (python3).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
requirements="$repo/tests/python/requirements.txt"
target="${CARGO_TARGET_DIR:-$repo/target}"
venv="$target/py-venv"
python="${PYTHON:-python3}"
# Bounds a pip install that hangs on the network; a cold install takes about half a minute.
pip_timeout_secs=600

mkdir -p "$target"
exec 9>"$target/py-venv.lock"
if ! flock -w "$pip_timeout_secs" 9; then
    echo "python-env: another process held $target/py-venv.lock for ${pip_timeout_secs}s" >&2
    exit 1
fi

want="$( { cat "$requirements"; "$python" --version 2>&1; } | sha256sum | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "$venv/bin/python"
    exit 0
fi

echo "python-env: installing tests/python/requirements.txt into $venv" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2
# Only binary wheels: a source build would need compilers and codec headers, and would be a
# different artifact from one machine to the next. --no-deps after a full install of every
# pin would be stricter still, but kafka-python and python-snappy's deps are all pinned here.
timeout "$pip_timeout_secs" "$venv/bin/python" -m pip install --disable-pip-version-check \
    --no-input --quiet --only-binary=:all: -r "$requirements" >&2
# Every installed distribution must be one of the pins (a new dependency of a pinned package
# would otherwise float).
"$venv/bin/python" - "$requirements" <<'PY' >&2
import sys
from importlib.metadata import distributions

pins = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        pins[name.lower().replace("_", "-")] = version
extra = []
for dist in distributions():
    name = dist.metadata["Name"].lower().replace("_", "-")
    if name in ("pip", "setuptools", "wheel"):
        continue
    if pins.get(name) != dist.version:
        extra.append(f"{name}=={dist.version}")
if extra:
    sys.exit(f"python-env: installed but not pinned in requirements.txt: {', '.join(extra)}")
PY
echo "$want" >"$stamp"
echo "$venv/bin/python"
