# SuperExec image of the SFDD app: Flower's official SuperExec plus the app's Python
# dependencies. It runs the ServerApp (next to the SuperLink) and each hospital's
# ClientApp (next to its SuperNode); the app's code itself arrives with every run (FAB).
# Build context: the repository root (see compose.yaml).
ARG FLWR_VERSION=1.41.0
FROM flwr/superexec:${FLWR_VERSION}

# CPU wheels of torch by default; e.g. https://download.pytorch.org/whl/cu128 for CUDA.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY docker/requirements.txt /tmp/sfdd-requirements.txt
RUN python -m pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" -r /tmp/sfdd-requirements.txt

ENTRYPOINT ["flower-superexec"]
