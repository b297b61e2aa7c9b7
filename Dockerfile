# syntax=docker/dockerfile:1.7
# Two images from one file (docs/production.md):
#   docker build --target api    -t unlearnd-api .     # FastAPI + Celery client, no torch (≈ 200 MB)
#   docker build --target worker -t unlearnd-worker .  # + torch/transformers/peft (CUDA wheels from PyPI)
#   docker build --target worker --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t unlearnd-worker:cpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UNLEARND_DATA_DIR=/data
WORKDIR /app
RUN useradd --create-home --uid 10001 unlearnd && mkdir -p /data && chown unlearnd /data
COPY pyproject.toml constraints.txt ./

# --- api: everything but the ML stack (the API never imports torch; tests/service checks it) --------------
FROM base AS api
RUN python - <<'EOF' > /tmp/api-requirements.txt
import re, tomllib
ML = {"torch", "transformers", "peft", "tokenizers", "safetensors", "accelerate"}
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower() not in ML))
EOF
RUN pip install -c constraints.txt -r /tmp/api-requirements.txt
COPY alembic.ini ./
COPY api/ api/
COPY core/ core/
COPY worker/ worker/
COPY cli/ cli/
COPY unlearnd/ unlearnd/
COPY migrations/ migrations/
RUN pip install --no-deps . && python -c "import unlearnd.api.app, sys; assert 'torch' not in sys.modules"
USER unlearnd
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=6 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
CMD ["sh", "-c", "alembic upgrade head && exec uvicorn unlearnd.api.app:app --host 0.0.0.0 --port 8000 --proxy-headers"]

# --- worker: the full project, torch included ------------------------------------------------------------
FROM base AS worker
# Empty: PyPI's torch (CUDA-enabled on Linux x86_64). CPU-only hosts: https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --index-url "$TORCH_INDEX_URL" "torch==$(grep '^torch==' constraints.txt | cut -d= -f3)"; \
    fi
COPY alembic.ini ./
COPY api/ api/
COPY core/ core/
COPY worker/ worker/
COPY cli/ cli/
COPY unlearnd/ unlearnd/
COPY migrations/ migrations/
RUN pip install -c constraints.txt .
USER unlearnd
CMD ["unlearnd", "worker"]
