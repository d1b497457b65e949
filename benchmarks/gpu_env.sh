# Sourced by gpu_check.sh and gpu_scale.sh: run from the checkout, with the project's code
# on the path; a machine without the project's packages gets them from wheels in .whl/
# (albumentations and what it needs), installed into /tmp/site first.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import albumentations" 2>/dev/null && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
