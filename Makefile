# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both create .venv on first use, installing torch 2.13.0 (CPU) before the package so that pip
# never pulls a CUDA build, and check that MuJoCo can render headless.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_WAIT_POLICY := PASSIVE
DEMO_DIR ?= runs/demo
BASE ?= checkpoints/base-mt10
DEMO_TASKS ?= button-press-wall-v3,door-close-v3
DEMO_EPISODES ?= 50
# PyTorch's CPU wheels, where pip finds no local torch 2.13.0+cpu (PyPI's Linux wheel is the CUDA build).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STVLA = MUJOCO_GL=$$(cat $(VENV)/mujoco_gl) $(VENV)/bin/stvla

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup-headless-gl.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.0+cpu" 2>/dev/null || \
		$(PY) -m pip install -q "torch==2.13.0" --index-url $(TORCH_CPU_INDEX)
	$(PY) -m pip install -q -e ".[test]"
	scripts/setup-headless-gl.sh $(PY) > $(VENV)/mujoco_gl
	touch $@

# The main job: a little fine-tuning data of two tasks outside MT10, an ST-VLA LoRA fine-tune from the
# committed MT10 base, and a closed-loop evaluation on held-out seeds that prints the per-task table and
# the path of a video.
demo: install
	$(STVLA) collect --task $(DEMO_TASKS) --episodes 13 --first_attempt 1000 --workers 2 --out $(DEMO_DIR)/data --resume
	$(STVLA) train --policy st --init $(BASE) --dataset $(DEMO_DIR)/data --out $(DEMO_DIR)/st --steps 600 --val_episodes 0
	$(STVLA) eval --policy $(DEMO_DIR)/st/policy --tasks $(DEMO_TASKS) --episodes $(DEMO_EPISODES) --workers 2 --out $(DEMO_DIR)/eval

test: install
	MUJOCO_GL=$$(cat $(VENV)/mujoco_gl) $(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) runs
