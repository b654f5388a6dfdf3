#!/usr/bin/env bash
# Sets up everything taperprune needs on a fresh Debian machine, and nothing twice:
# the virtualenv (.venv), the package with its dev tools, and the Fashion-MNIST files.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi

# Reinstall only when the dependency list changed (torch alone is ~5 GB).
stamp=.venv/.taperprune-deps
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
# The editable install must point at this checkout (a copied .venv points elsewhere).
here_src="$(pwd)/src/taperprune"
installed=$(.venv/bin/python -c "import os, taperprune; print(os.path.dirname(taperprune.__file__))" 2>/dev/null || true)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ "$installed" != "$here_src" ]; then
  echo "setup: installing taperprune and its dependencies into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[cli,dev]"
  echo "$want" > "$stamp"
fi

# Debian packages: Fashion-MNIST (the demo's data; no downloads at run time) and
# Chromium (the test that renders report.html as a person sees it).
need=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
echo "setup: ready (.venv/bin/taperprune)"
