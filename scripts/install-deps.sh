#!/usr/bin/env bash
# Installs the system packages memsnap builds against (and the two compressors its benchmarks
# compare with), and only those that are missing.
#
# Each line of REQUIREMENTS is "pkg-config-name header debian-package". A requirement counts as
# present when pkg-config knows the library or, for libraries that ship no .pc file, when the
# header exists. Missing ones are installed with apt-get (as root, or through sudo).
set -euo pipefail

REQUIREMENTS=(
  # pkg-config name   header                 Debian package
  "-                  -                      pkg-config"
  "liblz4             lz4.h                  liblz4-dev"
  "libzstd            zstd.h                 libzstd-dev"
  "libxxhash          xxhash.h               libxxhash-dev"
  "lmdb               lmdb.h                 liblmdb-dev"
)

have_pkg_config() { command -v pkg-config >/dev/null 2>&1; }

missing=()
for line in "${REQUIREMENTS[@]}"; do
  read -r pc header package <<<"$line"
  if [[ "$package" == "pkg-config" ]]; then
    have_pkg_config || missing+=("$package")
    continue
  fi
  if [[ "$pc" != "-" ]] && have_pkg_config && pkg-config --exists "$pc"; then continue; fi
  if [[ "$header" != "-" && -f "/usr/include/$header" ]]; then continue; fi
  missing+=("$package")
done

# Commands the benchmarks compare against (memsnap bench checkpoint runs lz4 -1 and zstd -1).
COMMANDS=(
  # command  Debian package
  "lz4       lz4"
  "zstd      zstd"
)
for line in "${COMMANDS[@]}"; do
  read -r command package <<<"$line"
  command -v "$command" >/dev/null 2>&1 || missing+=("$package")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
