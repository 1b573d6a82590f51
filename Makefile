# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv on first use, installing torch 2.13.0 (CPU) before the package so that pip
# never pulls a CUDA build, and check that MuJoCo can render headless.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_WAIT_POLICY := PASSIVE
DEMO_DIR ?= runs/demo

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup-headless-gl.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	scripts/setup-headless-gl.sh $(PY) > $(VENV)/mujoco_gl
	touch $@

demo: install
	MUJOCO_GL=$$(cat $(VENV)/mujoco_gl) $(VENV)/bin/stvla collect --task pick-place-v3 --episodes 5 --out $(DEMO_DIR)/data --resume
	MUJOCO_GL=$$(cat $(VENV)/mujoco_gl) $(VENV)/bin/stvla info $(DEMO_DIR)/data
	MUJOCO_GL=$$(cat $(VENV)/mujoco_gl) $(VENV)/bin/stvla view $(DEMO_DIR)/data --episode 0 --out $(DEMO_DIR)/episode0.mp4

test: install
	MUJOCO_GL=$$(cat $(VENV)/mujoco_gl) $(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
