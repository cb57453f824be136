# Sourced by run.sh: unpacks TorchServe and its Java runtime (made by fetch.sh) into /tmp, puts
# model-server.jar back together, and points bench.run at them (GLIMPSE_TS_VENV, JAVA_HOME).
# Returns non-zero, and sets nothing, when fetch.sh's TorchServe archives are missing.
torchserve_archives=bench/gpu/wheels
[[ -f $torchserve_archives/torchserve-site.tar.xz && -f $torchserve_archives/jre.tar.xz ]] || return 1
rm -rf /tmp/torchserve-site /tmp/jre
tar xJf "$torchserve_archives/torchserve-site.tar.xz" -C /tmp
tar xJf "$torchserve_archives/jre.tar.xz" -C /tmp
python3 - <<'PY'
import zipfile
from pathlib import Path

unpacked = Path("/tmp/torchserve-site/ts/frontend/model-server.jar.d")
with zipfile.ZipFile(unpacked.with_suffix(""), "w") as jar:  # stored: the JVM reads it just as well
    for path in sorted(p for p in unpacked.rglob("*") if p.is_file()):
        jar.write(path, path.relative_to(unpacked).as_posix())
PY
rm -rf /tmp/torchserve-site/ts/frontend/model-server.jar.d
mkdir -p /tmp/torchserve-site/bin
python=$(command -v python3)
# TorchServe's workers run under the launcher's interpreter, so the scripts name the one that has torch.
printf '#!%s\nfrom ts.model_server import start\nstart()\n' "$python" > /tmp/torchserve-site/bin/torchserve
printf '#!%s\nfrom model_archiver.model_packaging import generate_model_archive\ngenerate_model_archive()\n' \
  "$python" > /tmp/torchserve-site/bin/torch-model-archiver
chmod +x /tmp/torchserve-site/bin/*
export JAVA_HOME=/tmp/jre GLIMPSE_TS_VENV=/tmp/torchserve-site
export PYTHONPATH="/tmp/torchserve-site${PYTHONPATH:+:$PYTHONPATH}"
"$JAVA_HOME/bin/java" -version 2>&1 | head -1
