# CPU image that runs the quickstart on the bundled sample:
#   docker build -t trafficlens . && docker run --rm trafficlens
# Outputs go to /out (mount a folder there to keep them: -v "$PWD/out:/out").
FROM python:3.11-slim

# libpcap for `live -i`; nothing else from apt is needed for prep, train, evaluate and predict.
RUN apt-get update && apt-get install -y --no-install-recommends libpcap0.8 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/trafficlens
COPY pyproject.toml README.md ./
COPY src src
COPY examples examples

# torch's CPU build first (PyPI's Linux wheel is the CUDA one, 2+ GB of nvidia-* packages), then
# the ml extra alone: what the main job needs, xgboost as xgboost-cpu, no test-only packages.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir -e ".[ml]"

WORKDIR /out
ENTRYPOINT ["trafficlens"]
CMD ["quickstart", "-o", "/out/quickstart"]
