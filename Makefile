# Two commands on a fresh machine: `make run` (service + web bridge on embedded
# defaults) and `make test`. Everything installs into .venv at the repo root.

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
PIP      := $(VENV)/bin/pip
STUBS    := gen/python/avatar/v1/avatar_pb2.py
PROTO    := proto/avatar/v1/avatar.proto
GRPC_PORT ?= 50051
WEB_PORT  ?= 7135
# torch for the Ditto extra: this CPU build is the one on disk here; GPU users
# install the CUDA build of their choice instead (see checkpoints/README.md).
TORCH_SPEC ?= torch==2.13.0

.PHONY: fidelity device-carry example-analysis settings-doc run server test test-fast bench bench-gpu loadtest soak drift scaleout engines standin stubs venv dev-venv system-deps clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q 'grpcio-tools==1.62.3' 'protobuf>=4.25.3,<5'
	$(MAKE) --no-print-directory stubs
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -q '$(TORCH_SPEC)' -e '.[ditto,dev]'
	touch $@

venv: $(VENV)/.base
dev-venv: $(VENV)/.dev

$(STUBS): $(PROTO)
	mkdir -p gen/python
	$(PY) -m grpc_tools.protoc -I proto --python_out=gen/python --pyi_out=gen/python \
		--grpc_python_out=gen/python $(PROTO)
	touch gen/python/avatar/__init__.py gen/python/avatar/v1/__init__.py

stubs: $(STUBS)

# Service (gRPC :50051) and web bridge (http://localhost:7135) on embedded
# defaults: echo LLM, espeak-ng TTS, CPU lip-sync renderer. Both listen on
# loopback only, which is why auth can be switched off for this local run; to
# expose them see docs/web.md "Exposing it" and README "Security and operations".
run: venv stubs
	@echo "gRPC on 127.0.0.1:$(GRPC_PORT), player on http://127.0.0.1:$(WEB_PORT) (this machine only)"
	@trap 'kill $$server $$web 2>/dev/null; wait' INT TERM; \
	AVATAR_AUTH_DISABLED=$${AVATAR_AUTH_DISABLED:-true} $(VENV)/bin/avatar-server --host 127.0.0.1 --port $(GRPC_PORT) & server=$$!; \
	$(VENV)/bin/avatar-web --host 127.0.0.1 --port $(WEB_PORT) --grpc 127.0.0.1:$(GRPC_PORT) & web=$$!; \
	wait

server: venv stubs
	AVATAR_AUTH_DISABLED=$${AVATAR_AUTH_DISABLED:-true} $(VENV)/bin/avatar-server --host 127.0.0.1 --port $(GRPC_PORT)

# System tools the tests use: ffmpeg (independent decoder), chromium (player),
# redis and nginx (scale-out), a CJK font (Korean in the player). Installed with apt-get when run as root.
system-deps:
	@missing=""; \
	command -v ffprobe >/dev/null || missing="$$missing ffmpeg"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v nginx >/dev/null || missing="$$missing nginx-light"; \
	fc-list 2>/dev/null | grep -qi "noto sans cjk" || missing="$$missing fonts-noto-cjk"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "missing system packages:$$missing (tests needing them will skip)"; fi; \
	fi

test: dev-venv stubs system-deps
	$(PY) -m pytest -q -p no:cacheprovider

# Ditto fidelity harness: our pipeline stage by stage against the authors' code (DITTO_REFERENCE,
# default ../shared/reference/ditto-talkinghead) on full-size stand-in weights; `make test` runs it too.
fidelity: dev-venv stubs
	$(PY) -m pytest -q -p no:cacheprovider tests/fidelity

test-fast: dev-venv stubs
	$(PY) -m pytest -q -m "not browser and not slow"

bench: dev-venv stubs
	$(PY) bench/bench_service.py --turns 12
	$(PY) bench/bench_encoder.py
	$(PY) bench/bench_lipsync.py
	$(PY) bench/bench_rest.py

loadtest: dev-venv stubs
	$(PY) bench/loadtest.py --sessions 8 --seconds 60

soak: dev-venv stubs
	$(PY) bench/soak.py --sessions 8 --turns 200

# One session, 30 minutes of media: audio and video end within one frame.
drift: dev-venv stubs
	$(PY) bench/drift.py --minutes 30

# Ditto on a GPU with full-size stand-ins (see bench/RESULTS.md for the device commands).
bench-gpu: dev-venv stubs
	$(VENV)/bin/avatar-checkpoints standin --size full --no-onnx checkpoints-full
	$(PY) bench/bench_ditto_gpu.py --checkpoints checkpoints-full --out bench/out --compile --sessions 1,4,8,16

scaleout: dev-venv stubs system-deps
	$(PY) bench/scaleout.py

# Stand-in Ditto checkpoints (random weights, official layout) for tests/benchmarks.
standin: dev-venv
	$(VENV)/bin/avatar-checkpoints standin --size tiny checkpoints-tiny

# TensorRT engines from the official ONNX files, for this machine's GPU (TensorRT 10+).
engines: dev-venv
	$(PY) -m avatar_server.renderers.ditto.build_engines --checkpoints $${CHECKPOINTS:-checkpoints}

# .device-carry/: what the GPU machine lacks to run the service (see bench/RESULTS.md
# "How to run on the device"); needs network (PyPI, Debian) here.
device-carry: venv stubs
	$(PY) bench/device/prepare.py

# example/analysis.npz: the built-in avatar's face analysis (MediaPipe), shipped so a machine
# without the face landmarker serves the example; a test checks it is current.
example-analysis: venv stubs
	$(PY) example/make_analysis.py

# docs/configuration.md's settings table, generated from server/avatar_server/settings.py.
settings-doc: venv
	$(PY) -m avatar_server.settings docs/configuration.md

clean:
	rm -rf gen .pytest_cache artifacts
