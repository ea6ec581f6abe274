# Set-up and the everyday jobs. Each target creates the virtual environment at .venv when it is
# missing (or when pyproject.toml changed since), then runs.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.forensics-installed
DEMO ?= registry/mnist-effnet-lite0/samples/ddpm/heldout.npz

.PHONY: demo test test-quick venv

venv: $(STAMP)

# An environment made before the distribution was renamed (forensics -> forensics-attribution) holds the
# old name too, whose plugins would then register twice: it goes first.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip uninstall --yes --quiet --disable-pip-version-check forensics 2>/dev/null || true
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# The main job on the embedded default: attribute a bundled held-out sample set.
demo: $(STAMP)
	$(VENV)/bin/forensics attribute $(DEMO)

# The test suite (offline, CPU): what CI runs.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 -q

# The quick lane while editing: every test not marked slow (about 2½ minutes on two cores).
test-quick: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 -q -m "not slow"
