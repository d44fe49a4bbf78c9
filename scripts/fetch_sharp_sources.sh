#!/usr/bin/env bash
# Fetch the sharp photographs used by `cmdd prepare synth`, reproducibly, from Debian packages and
# the scikit-image wheel. No other network access.
#
#   scripts/fetch_sharp_sources.sh DEST        # e.g. /work/sharp_src (keep it outside the repo)
#
# For each Debian package: `apt-get download` (no install), `dpkg -x` into DEST/_pkg/PKG, then copy
# the chosen photographs into DEST/PKG/ with the package's copyright file as DEST/PKG/COPYRIGHT.
# The photographs bundled in scikit-image are written to DEST/skimage/ as PNG. Every file is listed
# with its sha256 in DEST/SOURCES.sha256. docs/synthetic_defocus.md lists files and licences.
#
# Deliberately NOT used (kept for independent checks): plasma-workspace-wallpapers, lxqt-themes.
# Set CMDD_SKIP_APT_UPDATE=1 to skip `apt-get update` (run as root otherwise it is skipped anyway).
set -euo pipefail

DEST=${1:?usage: $0 DEST}
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
work="$DEST/_pkg"
mkdir -p "$work"

# The versions docs/synthetic_defocus.md describes (Debian 12 bookworm); others give a warning.
declare -A VERSIONS=(
  [lomiri-wallpapers-16.04]=20.04.0-2
  [mate-backgrounds]=1.26.0-1
  [opencv-doc]=4.6.0+dfsg-12
)

if [ "${CMDD_SKIP_APT_UPDATE:-0}" != 1 ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
fi

for pkg in lomiri-wallpapers-16.04 mate-backgrounds opencv-doc; do
  want=${VERSIONS[$pkg]}
  deb=$(ls "$work/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$deb" ]; then
    (cd "$work" && apt-get download -q "$pkg" >/dev/null)
    deb=$(ls "$work/${pkg}"_*.deb | head -n1)
  fi
  got=$(dpkg-deb -f "$deb" Version)
  [ "$got" = "$want" ] || echo "warning: $pkg is version $got (documented: $want)" >&2
  rm -rf "${work:?}/$pkg" && dpkg -x "$deb" "$work/$pkg"
  mkdir -p "$DEST/$pkg"
  cp "$work/$pkg/usr/share/doc/$pkg/copyright" "$DEST/$pkg/COPYRIGHT"
done

pick() {  # pick PKG DIR FILE...: copy the named files of PKG's DIR into DEST/PKG (all must exist)
  local pkg=$1 dir=$2; shift 2
  for name in "$@"; do
    cp "$work/$pkg/$dir/$name" "$DEST/$pkg/"
  done
}

# Ubuntu Touch 16.04 wallpapers: 13 photographs (analogpattern and umang are graphics: skipped).
pick lomiri-wallpapers-16.04 usr/share/backgrounds \
  Bridge_by_Sander_Klootwijk.jpg Dragonfly_by_Bolly.jpg Picture_0B_by_freespace.jpg \
  Picture_1A_by_freespace.jpg Wine_by_Jakkub_Mede.jpg aitzgorri_by_Aitzol_Berasategi.jpg \
  free_by_Peter_Nerlich.jpg friends_by_Aitzol_Berasategi.jpg greentock_by_Peter_Nerlich.jpg \
  life_by_Aitzol_Berasategi.jpg picosdeeuropa_by_Aitzol_Berasategi.jpg \
  seeding_by_Clements_Engelhardt.jpg sunset_by_Aitzol_Berasategi.jpg
# MATE: the 12 "nature" photographs and one photograph from "desktop" (the rest is artwork).
pick mate-backgrounds usr/share/backgrounds/mate/nature \
  Aqua.jpg Blinds.jpg Dune.jpg FreshFlower.jpg Garden.jpg GreenMeadow.jpg LadyBird.jpg \
  RainDrops.jpg Storm.jpg TwoWings.jpg Wood.jpg YellowFlower.jpg
pick mate-backgrounds usr/share/backgrounds/mate/desktop GreenTraditional.jpg
# OpenCV sample data: 18 natural photographs (no calibration boards, renders, text, logos,
# paintings, or the deliberately blurred text_defocus.jpg; Debian removed lena).
pick opencv-doc usr/share/doc/opencv-doc/examples/data \
  aero1.jpg aloeL.jpg apple.jpg baboon.jpg board.jpg building.jpg butterfly.jpg ela_original.jpg \
  fruits.jpg graf1.png home.jpg left.jpg leuvenA.jpg messi5.jpg orange.jpg rubberwhale1.png \
  squirrel_cls.jpg stuff.jpg

# scikit-image: the photographs inside the wheel (public domain / CC0; none downloaded).
python3 - "$DEST/skimage" <<'PY'
import pathlib, sys
import imageio.v3 as iio
import numpy as np
from skimage import data
dest = pathlib.Path(sys.argv[1])
dest.mkdir(parents=True, exist_ok=True)
for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "brick", "grass", "gravel"):
    img = getattr(data, name)()
    if img.ndim == 2:                      # grey photographs: replicate to RGB
        img = np.repeat(img[..., None], 3, axis=2)
    iio.imwrite(dest / f"{name}.png", img)
PY

(cd "$DEST" && find . -path ./_pkg -prune -o -type f ! -name SOURCES.sha256 ! -name COPYRIGHT -print \
   | LC_ALL=C sort | xargs sha256sum > SOURCES.sha256)
echo "sharp sources in $DEST: $(wc -l < "$DEST/SOURCES.sha256") photographs" >&2
