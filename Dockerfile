# Tokenbunker: the vault API and the privacy portal (`tokenbunker serve`); `tokenbunker proxy` runs the sidecar.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md tokenbunker_cli.py config.yaml ./
COPY vault ./vault
COPY rules ./rules
COPY proxy_addons ./proxy_addons
COPY portal ./portal
# gcc only while installing: it builds the log scrubber's C scan (rules/_ipanchors.c), then leaves the image.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install . \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app tokenbunker && mkdir -p /app/data \
    && chown tokenbunker /app/data

USER tokenbunker
EXPOSE 3000
# The master key comes from the environment (TOKENBUNKER_MASTER_KEY) or a mounted key file, never the image.
HEALTHCHECK --interval=30s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/health').status != 200)"
CMD ["tokenbunker", "serve", "--config", "config.yaml", "--listen", "0.0.0.0:3000"]
