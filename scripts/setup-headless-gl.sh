#!/usr/bin/env bash
# Make sure MuJoCo can render off-screen (EGL, else OSMesa): install Mesa from Debian's packages if
# the probe fails and we are allowed to (root). Prints the MUJOCO_GL value that works.
set -u
PY=${1:-python3}
probe() {
  MUJOCO_GL=$1 "$PY" - <<'PYEOF' >/dev/null 2>&1
import mujoco
m = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
r = mujoco.Renderer(m, 16, 16); r.update_scene(mujoco.MjData(m)); r.render(); r.close()
PYEOF
}
for backend in egl osmesa; do
  if probe $backend; then echo $backend; exit 0; fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Mesa for headless rendering (libegl1 libgl1-mesa-dri libosmesa6)" >&2
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1-mesa-dri libosmesa6 >&2
  for backend in egl osmesa; do
    if probe $backend; then echo $backend; exit 0; fi
  done
fi
echo "error: MuJoCo cannot render off-screen. Install Mesa (Debian: apt-get install libegl1 libgl1-mesa-dri libosmesa6)" >&2
exit 1
